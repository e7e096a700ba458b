"""``python -m cosmos.optimus.media``."""

import sys

from cosmos.optimus.media.cli import main

sys.exit(main())
