"""``python registry-fixtures/registryfixtures serve ...`` (or ``python -m registryfixtures``
with ``registry-fixtures`` on ``sys.path``)."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a directory: its parent holds the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from registryfixtures.cli import main

sys.exit(main())
