"""Files for the inference CLI: which inputs, where each output goes, reading with metadata, atomic PNG writing.

Inputs are files (any name: the decoder decides), directories (searched recursively for
`pipeline.io.IMAGE_SUFFIXES`) and glob patterns (expanded here too, for shells that do not, `**` included). What a
folder holds but cannot be read (a dangling symlink, a symlink loop, a subfolder without permission) is named as a
failure, never dropped. Each output is `OUT / <path relative to the directory argument or the glob's fixed prefix>`
with the suffix `.png`; a plain file argument goes to `OUT / <name>.png`. Outputs keep the source's ICC profile
(when it describes RGB: a CMYK or gray profile no longer fits the converted pixels) and its EXIF block with the
orientation reset to 1 (the pixels are already upright). PNGs are written to a temporary file in the target folder
and renamed into place, so an interrupted job never leaves a partial PNG under the final name, and the next write of
that output removes what a killed job left behind (`.NAME.*.partial`).
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline.io import IMAGE_SUFFIXES, explain_error, input_notes, open_image, to_rgb8
from pipeline.scan import scan_folder, unusable_entry

EXIF_ORIENTATION_TAG = 0x0112
SOURCE_KEY = "restored-from"  # PNG text chunk: which input an output was made from


@dataclass(frozen=True)
class Job:
    """One input file and the PNG it becomes."""

    source: Path
    output: Path


@dataclass(frozen=True)
class Loaded:
    """A decoded input: `(H, W, 3)` uint8 RGB pixels and the metadata to carry into the output (or None)."""

    rgb8: np.ndarray
    icc_profile: bytes | None
    exif: bytes | None
    notes: tuple[str, ...] = ()  # what normalisation dropped (later frames, bits beyond 8), for the user


def collect_inputs(arguments: list[str], exclude: Path | None = None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """`(source, path relative to its argument)` for every input, in argument order without duplicates, and one
    failure message per argument that names nothing usable or entry that cannot be read. Files under `exclude` (the
    output folder) are skipped."""
    pairs, failures, seen = [], [], set()
    excluded = exclude.resolve() if exclude is not None else None
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            scan = scan_folder(path)
            found = [(f, f.relative_to(path)) for f in scan.images]
            failures += scan.problems
            what = f"{argument}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
        elif path.is_file():
            found, what = [(path, Path(path.name))], ""
        elif glob.has_magic(argument):
            found = _glob_matches(argument, failures)
            what = f"{argument}: no image files match this pattern"
        else:
            failures.append(f"{argument}: {unusable_entry(path) or 'no such file or directory'}")
            continue
        found = [(s, r) for s, r in found if excluded is None or excluded not in s.resolve().parents]
        if not found and what:
            failures.append(what)
        for source, relative in found:
            key = source.resolve()
            if key not in seen:
                seen.add(key)
                pairs.append((source, relative))
    return pairs, failures


def _glob_matches(pattern: str, failures: list[str]) -> list[tuple[Path, Path]]:
    """Matches of a glob pattern relative to its fixed leading folders; matched folders are searched too."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    found = []
    for match in sorted(Path(m) for m in glob.glob(pattern, recursive=True)):
        if match.is_dir():
            scan = scan_folder(match)
            found.extend((f, f.relative_to(base)) for f in scan.images)
            failures += scan.problems
        elif match.is_file() and match.suffix.lower() in IMAGE_SUFFIXES:
            found.append((match, match.relative_to(base)))
        elif (reason := unusable_entry(match)) is not None:
            failures.append(f"{match}: {reason}")
    return found


def plan_outputs(pairs: list[tuple[Path, Path]], out_dir: Path) -> tuple[list[Job], list[str]]:
    """One job per input, each with an output of its own. An input is `NAME.png` under OUT; where inputs share a
    name but for the suffix (`a.png`, `a.jpg`), a `.png` input keeps `a.png` and the others carry their suffix
    (`a.jpg.png`), with a note; so adding `a.jpg` next to `a.png` never renames `a.png`'s output."""
    groups: dict[Path, list[Path]] = {}
    for _, relative in pairs:
        groups.setdefault(relative.with_suffix(".png"), []).append(relative)
    jobs, notes, taken = [], [], set()
    for source, relative in pairs:
        output = out_dir / relative.with_suffix(".png")
        if len(groups[relative.with_suffix(".png")]) > 1 and relative.suffix != ".png":
            output = out_dir / relative.with_name(f"{relative.name}.png")
        counter = 2
        while output in taken:  # the same relative path under two arguments
            output = out_dir / relative.with_name(f"{relative.stem}-{counter}.png")
            counter += 1
        if output.name != relative.with_suffix(".png").name:
            notes.append(f"{source}: another input has the same name; writing {output}")
        taken.add(output)
        jobs.append(Job(source, output))
    return jobs, notes


def source_tag(job: Job, out_dir: Path) -> str:
    """What an output records of its input (`SOURCE_KEY`): the output's name under OUT and the input's file name,
    never a full path (outputs get shared)."""
    return f"{job.output.relative_to(out_dir).as_posix()} <- {job.source.name}"


def already_done(job: Job, out_dir: Path) -> bool:
    """For --skip-existing: the output exists and was made from this input (or records no input: a file someone
    put there by hand is theirs to keep)."""
    if not job.output.is_file():
        return False
    try:
        with Image.open(job.output) as img:
            recorded = img.info.get(SOURCE_KEY)
    except (OSError, SyntaxError, ValueError):
        return False  # damaged: restore it again
    return recorded is None or recorded == source_tag(job, out_dir)


def check_out_dir(out_dir: Path, pairs: list[tuple[Path, Path]], arguments: list[str]) -> None:
    """Refuse, before any work, an --out that is a file, cannot be written, holds inputs or lies in an input folder
    (outputs would mix with the originals, or replace a PNG input)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder: choose a folder (it is created)")
    existing = next((p for p in [out_dir, *out_dir.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write here (--out)", str(existing))
    resolved = out_dir.resolve()
    inside = [source for source, _ in pairs if resolved in source.resolve().parents]
    if inside:
        raise ValueError(
            f"--out {out_dir} holds {len(inside)} of the inputs (e.g. {inside[0]}): the restored files would mix with "
            "the originals (a PNG would be replaced); choose an --out outside the inputs"
        )
    for argument in arguments:
        folder = Path(argument)
        if folder.is_dir() and (resolved == folder.resolve() or folder.resolve() in resolved.parents):
            raise ValueError(
                f"--out {out_dir} lies inside the input folder {argument}: a later run would take the restored files "
                "as inputs; choose an --out outside it"
            )


def read_image(path: Path) -> Loaded:
    """Decode `path` by the project's normalisation rule and pick up the metadata the output keeps."""
    img = open_image(path)
    icc = img.info.get("icc_profile")
    if not isinstance(icc, bytes) or icc[16:20] != b"RGB ":  # the ICC header's colour space field
        icc = None
    exif = None
    if img.info.get("exif"):
        fields = Image.Exif()  # a copy: the image's own (img.getexif()) still drives the orientation below
        fields.load(img.info["exif"])
        if EXIF_ORIENTATION_TAG in fields:
            fields[EXIF_ORIENTATION_TAG] = 1
        exif = fields.tobytes()
    return Loaded(np.asarray(to_rgb8(img)), icc, exif, input_notes(img))


def describe_error(err: Exception) -> str:
    """A user-facing line for a failed read (`pipeline.io.explain_error`)."""
    return explain_error(err)


def write_png(
    rgb8: np.ndarray, path: Path, icc_profile: bytes | None = None, exif: bytes | None = None, source: str = ""
) -> None:
    """Write `(H, W, 3)` uint8 RGB as PNG atomically (temporary file in the same folder, fsync, rename); `source`
    goes in a text chunk (`SOURCE_KEY`) that --skip-existing reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra: dict = {k: v for k, v in (("icc_profile", icc_profile), ("exif", exif)) if v}
    if source:
        extra["pnginfo"] = PngInfo()
        extra["pnginfo"].add_text(SOURCE_KEY, source)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            Image.fromarray(rgb8, "RGB").save(stream, format="PNG", **extra)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):  # from a job killed mid-write
        leftover.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current
