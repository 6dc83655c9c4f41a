import sys

from nestbuild.cli import main

sys.exit(main())
