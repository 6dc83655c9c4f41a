"""Tests against the real components (buildah, the registry, cosign, ostree, qemu, dockerd)."""
