"""Stage 4: images to and from registries (push, pull, inspect)."""
