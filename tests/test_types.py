"""The results that cross modules are TypedDicts, and a type checker holds them to it: mypy passes on the modules
that produce and read them (evaluation results through the reports and plots, the release summary, the shard
manifest, the training checkpoint, the validation, the degradation parameters), and fails on a mistyped key."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [
    "release",
    "evaluate",
    "shards",
    "pipeline/shard_format.py",
    "pipeline/loader.py",
    "pipeline/degrade.py",
    "train/validate.py",
    "train/checkpoint.py",
    "train/run.py",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")  # shared: the second run reuses torch's analysed stubs


def mypy(cache: Path, *targets: str) -> tuple[str, int]:
    flags = ["--follow-imports=silent", "--ignore-missing-imports", "--cache-dir", str(cache)]
    out, err, status = api.run([*flags, *targets])
    return out + err, status


def test_the_typed_modules_pass_mypy(cache, monkeypatch):
    monkeypatch.chdir(ROOT)
    report, status = mypy(cache, *CHECKED)
    assert status == 0, report


def test_a_mistyped_result_key_fails(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    typo = tmp_path / "typo.py"
    typo.write_text(
        "from pipeline.shard_format import Manifest\n"
        "from release.results import ReleaseSummary\n"
        "from train.validate import ValResult\n\n\n"
        "def model(summary: ReleaseSummary, val: ValResult, manifest: Manifest) -> tuple[str, float, int]:\n"
        '    return summary["modle"], val["psnr_modle"], manifest["shards"][0]["sample"]\n'
    )
    report, status = mypy(cache, str(typo))
    assert status == 1
    for typo in (
        '"ReleaseSummary" has no key "modle"',
        '"ValResult" has no key "psnr_modle"',
        '"ShardEntry" has no key "sample"',
    ):
        assert typo in report, report
