"""nestbuild: build, validate, sign and ship custom images of image-based container-host OSes."""

__version__ = "0.1.0"
