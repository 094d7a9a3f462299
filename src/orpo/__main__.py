"""``python -m orpo``: the ``orpo`` command."""

import sys

from .cli import main

sys.exit(main())
