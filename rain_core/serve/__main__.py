"""``python -m rain_core.serve``: the same server as ``rain serve``."""

import sys

from .cli import main

sys.exit(main())
