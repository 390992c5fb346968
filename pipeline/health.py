"""Damaged training data: skip it, count it, say so, and stop only past a set share.

A long run on the user's own data must survive one bad file. `check_shards` runs at start: a shard that is missing
or whose size differs from the manifest (an interrupted copy) is left out, with a warning naming it, and so are
samples a damaged tar header hides from the index (`pipeline.stream`). While training, the torch loader's workers
skip image bytes that no longer read or decode and count them in a `SkipCounter` shared across processes; each skip
is printed with its shard and sample. The trainer logs the count and stops with `DataSkipLimit` (after a checkpoint)
once more than `loader.max_bad_share` of the samples attempted (or of the split, early in the first pass) were lost.
The fix is always the same: `python -m shards.verify DIR` names each damaged shard; repack it with `python -m
shards.pack`.
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from pipeline.shard_format import ShardEntry

FIX = "check the shards with `python -m shards.verify {folder}` and repack them with `python -m shards.pack`"


class DataSkipLimit(RuntimeError):
    """More training data was unreadable than `loader.max_bad_share` allows; the message names the shard and the fix."""


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def check_shards(folder: Path, entries: list[ShardEntry], max_share: float) -> tuple[list[ShardEntry], int, str]:
    """The manifest entries whose tar is present at its recorded size, the number of samples left out with the
    others (each named in a warning) and what was wrong with them, in words. Raises `DataSkipLimit` when that loses
    more than `max_share` of the samples.
    Cheap (no hashing): `shards.verify` also checks contents."""
    usable, lost, problems = [], 0, []
    for entry in entries:
        path = folder / entry["name"]
        size = path.stat().st_size if path.is_file() else None
        if size == entry["bytes"]:
            usable.append(entry)
            continue
        why = "missing" if size is None else f"{size} bytes, the manifest says {entry['bytes']} (truncated copy?)"
        problems.append(f"{entry['name']}: {why}")
        lost += entry["samples"]
        warn(f"shard {entry['name']} is {why}: its {entry['samples']} samples are left out")
    total = sum(entry["samples"] for entry in entries)
    if lost > max_share * total or not usable:
        raise DataSkipLimit(
            f"{lost} of {total} samples are in shards that cannot be read ({'; '.join(problems)}), more than "
            f"loader.max_bad_share={max_share:g}: {FIX.format(folder=folder)} (or raise loader.max_bad_share)"
        )
    return usable, lost, "; ".join(problems)


class SkipCounter:
    """Samples attempted and skipped, shared by the loader's worker processes (shared memory, fork or spawn) and
    read by the main process, with the last problem in words."""

    def __init__(self, folder: Path, split_samples: int, max_share: float, lost_at_start: int = 0, why: str = ""):
        context = multiprocessing.get_context()
        self.folder, self.split_samples, self.max_share = folder, split_samples, max_share
        self._attempted = context.Value("q", lost_at_start)
        self._skipped = context.Value("q", lost_at_start)
        self._last = context.Array("c", 512)
        self._last.value = why.encode("utf-8", "replace")[:511]
        self._reported = 0  # the first note also tells what check_shards left out

    def read(self, count: int = 1) -> None:
        with self._attempted.get_lock():
            self._attempted.value += count

    def skip(self, shard: str, what: str, why: str, count: int = 1) -> None:
        """Count `count` lost samples of `shard` and print one warning naming them."""
        with self._attempted.get_lock():
            self._attempted.value += count
        with self._skipped.get_lock():
            self._skipped.value += count
            total = self._skipped.value
        text = f"{Path(shard).name}: {what}: {why}"
        self._last.value = text.encode("utf-8", "replace")[:511]
        warn(f"skipped {text} ({total} skipped so far)")

    @property
    def attempted(self) -> int:
        return self._attempted.value

    @property
    def skipped(self) -> int:
        return self._skipped.value

    def check(self) -> None:
        """Raise `DataSkipLimit` when the skipped share is past the limit (early in the first pass, the share of the
        whole split: a bad shard read first must not stop a run that would lose 1% of its data)."""
        skipped, attempted = self._skipped.value, self._attempted.value
        if skipped > self.max_share * max(attempted, self.split_samples):
            last = self._last.value.decode("utf-8", "replace")
            raise DataSkipLimit(
                f"{skipped} of {max(attempted, self.split_samples)} training samples could not be read, more than "
                f"loader.max_bad_share={self.max_share:g} (last: {last}): {FIX.format(folder=self.folder)} "
                f"(or raise loader.max_bad_share)"
            )

    def note(self) -> str | None:
        """A line for the run log when the count changed since the last call, else None."""
        skipped = self._skipped.value
        if skipped == self._reported:
            return None
        self._reported = skipped
        last = self._last.value.decode("utf-8", "replace")
        return f"data: {skipped} unreadable training samples skipped so far (last: {last})"
