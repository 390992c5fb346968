"""`python -m evaluate ...`: see `evaluate.cli`."""

import sys

from evaluate.cli import main

sys.exit(main())
