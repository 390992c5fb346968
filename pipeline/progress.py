"""Progress for every command: a tqdm bar on a terminal, complete plain lines when stderr is a file or a pipe.

A redrawn bar fills a log file with carriage-return updates; `LineProgress` keeps tqdm's interface (`update`,
`set_postfix`, `set_postfix_str`, `write`, `close`, a context manager) and prints whole lines instead:
- `every_s=None` (the trainer): one line per `set_postfix` call, i.e. per log step;
- `every_s=S` (infer, evaluate): a line on `update` when S seconds have passed since the last one, and when the
  work is done, so a long job shows its rate and ETA without a line per item.
"""

from __future__ import annotations

import sys
import time
from typing import TypeAlias

from tqdm import tqdm

Bar: TypeAlias = "tqdm | LineProgress"  # what `progress` returns


def progress(
    total: int,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    every_s: float | None = 10.0,
    disable: bool = False,
    **bar_options: object,
) -> Bar:
    """A tqdm bar on a terminal (`bar_options` go to tqdm), else a `LineProgress`. `disable`: a bar that is silent."""
    if disable or sys.stderr.isatty():
        options = {"initial": initial, "unit": unit, "disable": disable, "dynamic_ncols": True} | bar_options
        return tqdm(total=total, desc=desc, **options)
    return LineProgress(total, desc, unit, initial, every_s)


class LineProgress:
    """tqdm's interface as plain lines on stderr (see the module docstring for when a line is printed)."""

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0, every_s: float | None = 10.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = self.shown = self.initial = initial
        self.start = self.last = time.perf_counter()
        self.postfix = ""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.every_s is None:
            return
        if self.n >= self.total or time.perf_counter() - self.last >= self.every_s:
            self._line()

    def set_postfix(self, **values: object) -> None:
        self.set_postfix_str(" ".join(f"{key}={value}" for key, value in values.items()))

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.every_s is None:
            self._line()

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stdout, flush=True)  # as tqdm.write: stdout unless told

    def close(self) -> None:
        if self.every_s is not None and self.n != self.shown:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        elapsed_s, done = now - self.start, self.n - self.initial
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        clock = tqdm.format_interval
        eta = f", ETA {clock((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        text = f"{self.desc} {self.n}/{self.total} {self.unit} [{clock(elapsed_s)}, {rate:.2f} {self.unit}/s{eta}]"
        print(f"{text} {self.postfix}".rstrip(), file=sys.stderr, flush=True)
        self.shown, self.last = self.n, now
