"""``python -m attnlab``: the ``attnlab`` command (see :mod:`attnlab.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
