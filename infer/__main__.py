"""`python -m infer INPUT... --out DIR`: restore images (options in infer/cli.py, or `python -m infer --help`)."""

import sys

from infer.cli import main

sys.exit(main())
