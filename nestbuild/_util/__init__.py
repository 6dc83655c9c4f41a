"""Small helpers every stage uses: atomic files, safe paths, progress, terminal text."""
