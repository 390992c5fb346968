"""What a folder of inputs holds: the image files by name, the other files, and every entry that cannot be read.

Shared by `infer` (folder arguments) and `shards.pack`, so neither drops a file without a word: a dangling symlink,
a symlink loop, a subfolder without permission and a symlink back into the tree are each named with the reason.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import IMAGE_SUFFIXES


@dataclass(frozen=True)
class FolderScan:
    """`images`: files named like images (`IMAGE_SUFFIXES`); `others`: the other files; `unusable`: each entry that
    cannot be read, with why."""

    images: list[Path]
    others: list[Path]
    unusable: list[tuple[Path, str]]

    @property
    def problems(self) -> list[str]:
        """One line per unusable entry: `PATH: why`."""
        return [f"{path}: {why}" for path, why in self.unusable]


def unusable_entry(path: Path) -> str | None:
    """Why a path that is neither a readable file nor a folder cannot be used, or None when it does not exist at all."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 raises this for a loop
        return "a symlink loop"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        return f"a dangling symlink (to {os.readlink(path)})"
    return None


def scan_folder(folder: Path, skip: tuple[str, ...] = ()) -> FolderScan:
    """Image files under `folder` (recursive, following symlinks, sorted), the other files, and one message per entry
    that cannot be read: an unreadable subfolder, a dangling symlink, a symlink loop or a second way into a folder
    already searched. Folders named in `skip` are not entered."""
    images, others, problems, visited = [], [], [], set()

    def unreadable(err: OSError) -> None:
        problems.append((Path(err.filename), f"cannot list this folder ({err.strerror})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink back into the tree: searching it again would never end
            problems.append((Path(root), f"a symlink to a folder already searched ({real}); not searched twice"))
            dirs.clear()
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in files:
            entry = Path(root) / name
            reason = unusable_entry(entry)
            if reason is not None:
                problems.append((entry, reason))
            elif entry.suffix.lower() in IMAGE_SUFFIXES:
                images.append(entry)
            else:
                others.append(entry)
    return FolderScan(sorted(images), sorted(others), sorted(problems))
