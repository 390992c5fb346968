"""Evaluation harness: metrics against hand values and skimage, the two protocols, the CLI's outputs end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from evaluate.analysis import quantise, tile_classes
from evaluate.cli import main
from evaluate.harness import evaluate
from evaluate.metrics import metric_label, psnr, psnr_from_mse, rgb_to_y, ssim
from evaluate.protocols import Cell, degrade_anchor, degrade_real, make_cells, parse_qualities, real_rng
from pipeline.io import pil_jpeg, save_png, to_tensor
from pipeline.reference import degrade_reference

CELL_KEYS = {"sigma", "quality", "psnr_input", "psnr_model", "ssim_input", "ssim_model", "images", "psnr_gain"}


def _batch(*arrays: np.ndarray) -> torch.Tensor:
    return torch.stack([to_tensor(np.array(a)) for a in arrays])


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """(clean, distorted) uint8 pairs: noise, JPEG, a shift, and an odd size."""
    rng = np.random.default_rng(0)
    clean = natural_image(40, 52, seed=1)
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    odd = natural_image(33, 27, seed=2)
    return [(clean, noisy), (clean, pil_jpeg(clean, 20)), (clean, np.roll(clean, 2, axis=1)), (odd, pil_jpeg(odd, 50))]


def test_psnr_matches_hand_computation(device):
    clean = torch.zeros(2, 3, 8, 8, device=device)
    restored = clean.clone()
    restored[0] += 0.1  # MSE 0.01 -> 20 dB
    restored[1, 0, :4] = 0.5  # half the red channel off by 0.5: 32 of 192 values, MSE = 0.25 / 6
    expected = torch.tensor([20.0, 10 * math.log10(6 / 0.25)])
    torch.testing.assert_close(psnr(restored, clean).cpu(), expected, rtol=0, atol=1e-4)
    assert psnr(clean, clean)[0] == math.inf
    torch.testing.assert_close(psnr_from_mse(torch.tensor([1e-3])), torch.tensor([30.0]))
    border = clean.clone()
    border[..., 0, :] = 1.0
    assert psnr(border, clean, crop_border=1)[0] == math.inf and psnr(border, clean)[0] < 20


def test_y_channel_is_matlab_bt601():
    colours = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.5, 0.7]])
    image = colours.T.reshape(1, 3, 1, 6)
    luma = rgb_to_y(image).flatten()
    expected = torch.tensor([16, 235, 16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + 13.0962 + 64.2765 + 17.4762]) / 255
    torch.testing.assert_close(luma, expected, rtol=0, atol=1e-6)
    reference = rgb2ycbcr(colours.numpy().reshape(1, 6, 3))[..., 0] / 255
    np.testing.assert_allclose(luma.numpy(), reference.ravel(), atol=1e-6)


def test_ssim_matches_skimage_rgb_and_y():
    for clean8, other8 in _pairs():
        clean, other = _batch(clean8), _batch(other8)
        a, b = other8 / 255.0, clean8 / 255.0
        options = {"data_range": 1, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
        expected_rgb = structural_similarity(a, b, channel_axis=-1, **options)
        assert abs(float(ssim(other, clean)[0]) - expected_rgb) < 1e-3
        ya, yb = rgb2ycbcr(a)[..., 0] / 255, rgb2ycbcr(b)[..., 0] / 255
        assert abs(float(ssim(other, clean, y_channel=True)[0]) - structural_similarity(ya, yb, **options)) < 1e-3
        cropped = structural_similarity(ya[4:-4, 4:-4], yb[4:-4, 4:-4], **options)
        assert abs(float(ssim(other, clean, y_channel=True, crop_border=4)[0]) - cropped) < 1e-3
    assert float(ssim(clean, clean)[0]) == pytest.approx(1.0, abs=1e-6)
    assert metric_label("psnr", y_channel=True, crop_border=4) == "psnr_y_crop4"
    assert metric_label("ssim") == "ssim_rgb"


def test_ssim_is_per_image_in_a_batch():
    (clean8, noisy8), (_, jpeg8) = _pairs()[:2]
    batch = ssim(_batch(noisy8, jpeg8), _batch(clean8, clean8))
    assert batch.shape == (2,)
    assert float(batch[1]) == pytest.approx(float(ssim(_batch(jpeg8), _batch(clean8))[0]), abs=1e-6)


def test_anchor_protocol_reproduces_kair_noise_exactly():
    clean8 = natural_image(24, 30, seed=3)
    clean8[:4] = 0  # dark rows: the unclipped noise goes below 0
    np.random.seed(0)  # KAIR main_test_dncnn.py, reseeded before every image
    expected = np.float32(clean8 / 255.0)
    expected += np.random.normal(0, 25 / 255.0, expected.shape)
    noisy = degrade_anchor(clean8, Cell(25, None))
    assert noisy.dtype == torch.float32 and noisy.shape == (3, 24, 30)
    np.testing.assert_array_equal(noisy.permute(1, 2, 0).numpy(), expected)
    assert float(noisy.min()) < 0  # neither clipped nor quantised
    other = natural_image(24, 30, seed=4)
    same_noise = degrade_anchor(other, Cell(25, None)) - to_tensor(other)
    torch.testing.assert_close(same_noise, noisy - to_tensor(clean8), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no JPEG"):
        degrade_anchor(clean8, Cell(25, 30))


def test_real_protocol_is_degrade_reference_with_libjpeg():
    clean8 = natural_image(32, 40, seed=5)
    cell = Cell(15, 30)
    params = {"sigma_255": 15, "quality": 30, "subsampling": 2, "quality2": 0}
    expected = degrade_reference(clean8, params, real_rng(cell, 2))
    degraded = degrade_real(clean8, cell, 2)
    np.testing.assert_array_equal((degraded * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), expected)
    noisy8 = degrade_reference(clean8, {"sigma_255": 15, "quality": 0}, real_rng(cell, 2))
    np.testing.assert_array_equal(expected, pil_jpeg(noisy8, 30, "4:2:0"))  # the same noise, then one real JPEG
    assert not torch.equal(degraded, degrade_real(clean8, cell, 3))  # another image index, other noise
    assert torch.equal(degraded, degrade_real(clean8, cell, 2))  # deterministic


def test_cells_and_qualities():
    assert parse_qualities("10, none,90") == [10, None, 90]
    cells, messages = make_cells([15, 25], [30, None], "anchor")
    assert cells == [Cell(15, None), Cell(25, None)] and len(messages) == 2
    with pytest.raises(ValueError):
        make_cells([15], [30], "anchor")
    with pytest.raises(ValueError):
        parse_qualities("0")


def test_tile_classes_follow_the_documented_rule():
    flat = np.full((64, 64, 3), 120, np.uint8)
    edge = flat.copy()
    edge[:, 32:] = 200
    texture = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    image = np.concatenate([flat, edge, texture], axis=1)
    assert tile_classes(_batch(image), 64) == ["flat", "edge", "texture"]


def test_evaluate_api_identity_gains_nothing():
    images = [natural_image(40, 48, seed=s) for s in range(2)]
    result = evaluate(None, images, [15], [50, None], "real", "cpu", progress=False, crops_per_cell=1, worst=2)
    assert [(c["sigma"], c["quality"]) for c in result["cells"]] == [(15, 50), (15, None)]
    assert all(c["psnr_gain"] == 0 and c["ssim_gain"] == 0 and c["images"] == 2 for c in result["cells"])
    assert len(result["per_image"]) == 4 and len(result["worst_images"]) == 2
    assert {t["content"] for t in result["tile_classes"]} <= {"flat", "edge", "texture"}


def test_evaluate_api_runs_the_model_and_keeps_its_mode():
    net = torch.nn.Conv2d(3, 3, kernel_size=1)  # restored = 0.5 degraded + 0.25: a washed-out image
    with torch.no_grad():
        net.weight.copy_(0.5 * torch.eye(3).view(3, 3, 1, 1))
        net.bias.fill_(0.25)
    net.train()
    result = evaluate(net, [natural_image(40, 48, seed=3)], [5], [None], "real", "cpu", progress=False)
    assert result["cells"][0]["psnr_gain"] < -5 and result["parameters"] == 12
    assert net.training  # a trainer calling evaluate gets its model back in training mode


def _write_images(folder: Path, count: int) -> None:
    for i in range(count):
        save_png(natural_image(40 + 8 * i, 56, seed=10 + i), folder / f"img{i}.png")


def _check_outputs(out: Path, cells: int, images: int) -> dict:
    for name in ("results.json", "results.md", "per_image.csv", "failure.md", "gain_heatmap.png", "psnr_vs_sigma.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "results.json").read_text())
    assert len(result["cells"]) == cells and all(set(c) >= CELL_KEYS for c in result["cells"])
    assert all(c["images"] == images for c in result["cells"])
    assert result["metric"] == {"psnr": "psnr_rgb", "ssim": "ssim_rgb"}
    with (out / "per_image.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == cells * images
    for entry in result["worst_images"] + result["worst_tiles"]:
        assert (out / entry["file"]).is_file()
    assert any((out / "crops").glob("*.png"))
    failure = (out / "failure.md").read_text()
    assert "flat" in failure and "edge" in failure and "texture" in failure and "least gain" in failure
    assert Image.open(out / "gain_heatmap.png").size[0] > 100
    return result


def test_cli_identity_end_to_end(tmp_path):
    _write_images(tmp_path / "data", 3)
    out = tmp_path / "out"
    args = ["--model", "identity", "--data", str(tmp_path / "data"), "--out", str(out), "--quiet"]
    assert main([*args, "--sigmas", "15,25", "--qualities", "30,none", "--protocol", "real", "--device", "cpu"]) == 0
    result = _check_outputs(out, cells=4, images=3)
    assert result["model"] == "identity" and result["protocol"] == "real" and result["parameters"] is None
    assert all(c["psnr_gain"] == 0 for c in result["cells"])
    assert "| 25 | 30 | 3 |" in (out / "results.md").read_text()


def test_cli_anchor_with_a_tiny_checkpoint(tmp_path):
    model_api = pytest.importorskip("model")
    net = model_api.create_model("nafnet", width=8)
    torch.nn.init.normal_(net.intro.weight, std=0.1)
    checkpoint = {"model": net.state_dict(), "model_name": "nafnet", "model_kwargs": {"width": 8}, "ema": None}
    torch.save(checkpoint, tmp_path / "tiny.pt")
    _write_images(tmp_path / "data", 2)
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "data"), "--out", str(out), "--quiet"]
    assert main([*args, "--sigmas", "25", "--qualities", "30,none", "--protocol", "anchor", "--limit", "1"]) == 0
    result = _check_outputs(out, cells=1, images=1)
    assert result["parameters"] == model_api.count_params(net)
    assert result["protocol"] == "anchor" and result["messages"]  # the JPEG cell was dropped with a note


@pytest.mark.skipif(importlib.util.find_spec("bm3d") is None, reason="bm3d not installed (pip install bm3d)")
def test_bm3d_baseline_denoises():
    image = natural_image(32, 32, seed=7)
    result = evaluate(None, [image], [25], [None], "real", "cpu", baseline="bm3d", progress=False)
    cell = result["cells"][0]
    assert "bm3d" in result["methods"] and cell["psnr_bm3d"] > cell["psnr_input"] + 1


@pytest.mark.parametrize("told", [True, "sigma", "quality"])
def test_told_runs_a_conditioned_model_on_the_true_cell_and_needs_one(told):
    """Told both (True), or the true sigma alone, or the true quality alone (the other withheld)."""
    from model import create_model
    from model.condition import encode_condition

    model = create_model("nafnet", width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,), conditioned=True)
    torch.manual_seed(0)
    for param in model.parameters():  # fresh blocks and FiLM are the identity: make the condition matter
        torch.nn.init.normal_(param, std=0.05)
    clean8 = natural_image(24, 30, seed=3)
    result = evaluate(model, [clean8], [25.0], [30, None], "real", "cpu", told=told, progress=False)
    assert result["methods"] == ["input", "model", "told"] and result["told"] == ("both" if told is True else told)
    for row in result["per_image"]:
        cell = Cell(row["sigma"], row["quality"])
        degraded = degrade_real(clean8, cell, 0)[None]
        with torch.no_grad():
            sigma = None if told == "quality" else cell.sigma_255
            quality = None if told == "sigma" else cell.quality or 0
            restored = model.eval()(degraded, encode_condition(1, sigma, quality))
        assert row["psnr_told"] == pytest.approx(float(psnr(quantise(restored), _batch(clean8))[0]), abs=1e-4)
        assert row["psnr_told"] != pytest.approx(row["psnr_model"], abs=1e-3)
    blind = create_model("nafnet", width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))
    with pytest.raises(ValueError, match="conditioned"):
        evaluate(blind, [clean8], [25.0], [None], "real", "cpu", told=told, progress=False)
    with pytest.raises(ValueError, match="told must be one of"):
        evaluate(model, [clean8], [25.0], [None], "real", "cpu", told="noise", progress=False)


def test_ensemble_runs_the_model_over_eight_flips_and_turns(tmp_path):
    from model import create_model
    from model.testtime import SelfEnsemble

    model = create_model("nafnet", width=8, enc_blocks=(1,), middle_blocks=1, dec_blocks=(1,))
    torch.manual_seed(1)
    for param in model.parameters():  # fresh blocks are the identity, which every flip leaves alone
        torch.nn.init.normal_(param, std=0.05)
    clean8 = natural_image(24, 30, seed=4)
    plain = evaluate(model, [clean8], [25.0], [None], "real", "cpu", progress=False)
    result = evaluate(model, [clean8], [25.0], [None], "real", "cpu", ensemble=True, progress=False)
    row = result["per_image"][0]
    degraded = degrade_real(clean8, Cell(25.0, None), 0)[None]
    with torch.no_grad():
        expected = SelfEnsemble(model.eval())(degraded)
    assert result["ensemble"] and not plain["ensemble"]
    assert row["psnr_model"] == pytest.approx(float(psnr(quantise(expected), _batch(clean8))[0]), abs=1e-4)
    assert row["psnr_model"] != pytest.approx(plain["per_image"][0]["psnr_model"], abs=1e-3)
    torch.save({"model": model.state_dict(), "model_name": "nafnet", "model_kwargs": {}}, tmp_path / "m.pt")
    with pytest.raises(SystemExit, match="identity"):
        main(["--model", "identity", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--ensemble"])
