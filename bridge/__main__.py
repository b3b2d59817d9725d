"""Allow ``python -m bridge``."""

import sys

from bridge.cli import console_main

sys.exit(console_main())
