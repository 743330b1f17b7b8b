"""``python -m rain_core.cli``: the ``rain`` command."""

import sys

from . import main

sys.exit(main())
