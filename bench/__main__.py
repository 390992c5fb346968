"""`python -m bench SUBJECT [options]`: runs one subject's module (`python -m bench SUBJECT --help` for its options)."""

from __future__ import annotations

import importlib
import sys

import bench
from bench import SUBJECTS


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBJECTS:
        print(f"usage: python -m bench {{{','.join(SUBJECTS)}}} [options]\n\n{bench.__doc__}")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return importlib.import_module(f"bench.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
