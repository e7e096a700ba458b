"""``python -m cosmos.cli`` is the ``cosmos`` command."""

import sys

from cosmos.cli.main import main

sys.exit(main())
