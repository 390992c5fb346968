"""Repository contracts: environment.yml in step with pyproject.toml, the fresh-machine scripts, the PIL in use."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda and "pip" in conda
    editable = [p for p in pip if p.startswith("-e .")]
    assert len(editable) == 1, "environment.yml must install the project itself (-e .[extras])"
    extras = re.fullmatch(r"-e \.\[(.*)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(_pyproject()["optional-dependencies"]), f"unknown extras {extras}"
    requirements = [p for p in pip if not p.startswith("-e") and not p.startswith("torch==")]
    assert requirements == _pyproject()["dependencies"]


def test_torch_pin_is_the_same_everywhere():
    env_pin = [
        p
        for p in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"][-1]["pip"]
        if p.startswith("torch==")
    ]
    script = (ROOT / "scripts" / "venv.sh").read_text()
    assert env_pin and env_pin[0] in script


def test_readme_names_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/main.sh" in readme and "bash scripts/test.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_ci_lints_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    tests = lines.index("bash scripts/test.sh")
    assert lines.index(".venv/bin/ruff check .") < tests and lines.index(".venv/bin/ruff format --check .") < tests


def test_pillow_simd_is_the_loaded_pil_where_requested():
    if not (Path(sys.prefix) / "pillow-simd-requested").exists():
        pytest.skip("pillow-simd was not requested for this environment (ML_RESTORATION_PILLOW_SIMD=0)")
    import PIL

    dist = importlib.metadata.distribution("pillow-simd")
    assert PIL.__version__ == dist.version, "stock Pillow replaced pillow-simd: reinstall it last (scripts/venv.sh)"
    assert any(str(f).startswith("PIL/") for f in dist.files)
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("pillow")


def test_pillow_has_every_codec_users_need():
    """The environment scripts/venv.sh (the README's fresh-machine path) builds must read WebP, AVIF, compressed TIFF
    and the rest: a Pillow built without a codec's headers silently lacks it (pillow-simd on a bare machine)."""
    from pipeline.codecs import missing_codecs

    assert missing_codecs() == [], "this Pillow lacks codecs: rerun scripts/venv.sh (see python -m pipeline.codecs)"
