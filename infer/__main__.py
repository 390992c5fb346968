"""`python -m infer INPUT... --out DIR`: restore images (options in infer/cli.py, or `python -m infer --help`)."""

import sys

from infer.cli import main
from pipeline.command import run_command

sys.exit(run_command(main, "python -m infer"))
