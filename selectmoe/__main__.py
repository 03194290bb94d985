"""``python -m selectmoe``."""

import sys

from selectmoe.cli import main

sys.exit(main())
