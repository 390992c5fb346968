"""infer.api: `Restorer` restores PIL images and numpy arrays as `python -m infer` does, and the README's Python
example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, expected_restore, natural_image, save_checkpoint, tiny_nafnet
from PIL import Image

from infer.api import Restorer
from model import SHIPPED_MODEL
from model.condition import encode_condition


def test_restorer_takes_and_returns_pil_images_and_arrays(tmp_path):
    checkpoint = save_checkpoint(tiny_nafnet(conditioned=True), tmp_path / "c.pt", conditioned=True)
    rgb8 = natural_image(37, 45, seed=3)
    restorer = Restorer(checkpoint, device="cpu")
    from_pil = restorer(Image.fromarray(rgb8).convert("RGBA"))
    assert isinstance(from_pil, Image.Image) and from_pil.mode == "RGB" and from_pil.size == (45, 37)
    np.testing.assert_array_equal(np.asarray(from_pil), expected_restore(checkpoint, rgb8))
    from_array = restorer(rgb8, sigma=25, quality=40)
    assert from_array.dtype == np.uint8 and from_array.shape == rgb8.shape
    np.testing.assert_array_equal(from_array, expected_restore(checkpoint, rgb8, encode_condition(1, 25.0, 40.0)))
    from_float = restorer(rgb8 / 255.0)
    assert from_float.dtype == np.float32 and np.abs(from_float * 255 - np.asarray(from_pil)).max() <= 0.5 + 1e-3
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        restorer(rgb8[..., 0])


def test_restorer_of_a_blind_model_refuses_a_strength(tmp_path):
    restorer = Restorer(save_checkpoint(tiny_nafnet(), tmp_path / "b.pt"), device="cpu")
    with pytest.raises(ValueError, match="blind"):
        restorer(natural_image(16, 16, seed=1), sigma=25)


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped weights are absent")
def test_readme_python_example_runs(tmp_path):
    """The README's Python block, extracted and run as written in a fresh interpreter, on a noisy image."""
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"^## Python\n\n```python\n(.*?)^```", readme, flags=re.M | re.S).group(1)
    (tmp_path / "example.py").write_text(example)
    clean = natural_image(48, 56, seed=9).astype(np.float32)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, check=True, timeout=300)
    restored = np.asarray(Image.open(tmp_path / "restored.png")).astype(np.float32)
    assert restored.shape == noisy.shape
    assert np.abs(restored - clean).mean() < np.abs(noisy.astype(np.float32) - clean).mean()  # it did restore
