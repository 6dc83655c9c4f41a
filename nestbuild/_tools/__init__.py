"""The external programs nestbuild drives, one small module each, all through ``run``."""
