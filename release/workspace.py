"""What the release campaign works with: its config, its training photos and shards, the machine, git.

The campaign trains on CBSD432 and ImageNetSample together (`SOURCES`, packed with `DOWNSCALE`), each with its own
held-out split; `data/cbsd432` (CBSD432 alone) gives the held-out split the ledger has followed since phase 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.shard_format import MANIFEST
from shards.pack import pack

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "release" / "campaign.yaml"
TRAIN_PHOTOS = ROOT.parent / "shared" / "data" / "train"
SOURCES = (TRAIN_PHOTOS / "CBSD432", TRAIN_PHOTOS / "ImageNetSample")
DOWNSCALE = [1, 1]  # both at full size: it beat ImageNetSample box-downscaled by 2 (docs/campaign.md)
SHARDS = ROOT / "data" / "campaign"
CBSD432_SHARDS = ROOT / "data" / "cbsd432"


def ensure_shards() -> Path:
    """Pack the campaign's shards and CBSD432's alone where they are missing; return the campaign's folder."""
    wanted = ((SHARDS, list(SOURCES), DOWNSCALE), (CBSD432_SHARDS, [SOURCES[0]], [1]))
    for out, sources, downscale in wanted:
        if (out / MANIFEST).is_file():
            continue
        missing = [str(s) for s in sources if not s.is_dir()]
        if missing:
            sys.exit(f"campaign: training photos not found: {', '.join(missing)}")
        manifest = pack(sources, out, downscale=downscale, workers=2)
        print(f"packed {out}: {manifest['splits']['train']['samples']} train images")
    return SHARDS


def shown(path: Path) -> str:
    """A path as commands and records show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def cpu_words() -> str:
    """The CPU in a few words, with the vector extensions training precision depends on."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    isa = "AVX-512, bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2, no bf16"
    return f"{name or 'unknown CPU'} ({isa})"


def git_commit(paths: list[Path], subject: str) -> None:
    """Commit exactly `paths` (nothing else staged is swept in)."""
    names = [shown(p) for p in paths]
    subprocess.run(["git", "add", "--", *names], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", subject, "--", *names], cwd=ROOT, check=True)
    print(f"committed: {subject}")
