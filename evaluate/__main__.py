"""`python -m evaluate ...`: see `evaluate.cli`."""

import sys

from evaluate.cli import main
from pipeline.command import run_command

sys.exit(run_command(main, "python -m evaluate"))
