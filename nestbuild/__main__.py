from nestbuild.cli import entry

entry()
