"""Pure-Python tests: no root, no external tools, the whole set in seconds."""
