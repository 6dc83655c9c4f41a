"""Stage 1: a Containerfile to a bootable derived image (buildah, or Docker)."""
