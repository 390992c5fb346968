"""Device JPEG and degradation: bit-exactness against libjpeg (Pillow), determinism, gradients, sampling."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import natural_image, shared_images
from PIL import Image

from pipeline.config import DegradeConfig
from pipeline.degrade import check_config, degrade, ranges_at, sample_and_degrade, sample_params
from pipeline.io import load_rgb8, pil_jpeg, to_rgb8_array, to_tensor
from pipeline.jpeg import SUBSAMPLING, jpeg, quant_tables
from pipeline.reference import degrade_reference


def _batch(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.stack([to_tensor(a) for a in images]).to(device)


def test_quant_tables_match_pillow():
    image = Image.fromarray(natural_image(16, 16, 0))
    ours = quant_tables(torch.arange(1, 101))
    for quality in range(1, 101):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        tables = Image.open(buffer).quantization
        for index in (0, 1):
            assert ours[quality - 1, index].flatten().tolist() == list(tables[index]), (quality, index)


@pytest.mark.parametrize("codec", ["float64", "int32"])
@pytest.mark.parametrize("size", [(8, 8), (37, 53), (64, 48), (17, 120)])
def test_device_jpeg_is_bit_exact_to_libjpeg(size, codec, device):
    """Mixed qualities and subsampling modes in one batch, odd sizes, both eager codecs: every pixel equals Pillow's."""
    _check_bit_exact(size, codec, device)


@pytest.mark.slow
def test_compiled_jpeg_is_bit_exact_to_libjpeg(device):
    """The torch.compile'd codec (Inductor: C++ on the CPU), 4:2:0 (both resampling steps) on a size whose padding
    exercises every edge rule; one mode only, as each compiles for about 30 s on a cold cache."""
    _check_bit_exact((21, 35), "compiled", device, ["4:2:0"])


def _check_bit_exact(size: tuple[int, int], codec: str, device: torch.device, modes: list[str] | None = None) -> None:
    qualities = [1, 5, 10, 33, 50, 75, 90, 100, 95]
    modes = [modes[i % len(modes)] for i in range(9)] if modes else ["4:2:0", "4:4:4", "4:2:2"] * 3
    images = [natural_image(*size, seed=i) for i in range(len(qualities))]
    codes = torch.tensor([SUBSAMPLING[m] for m in modes])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="degrade.codec=compiled failed")  # no silent fallback here
        out = jpeg(_batch(images, device), torch.tensor(qualities), codes, codec=codec)
    for i, (rgb8, q, mode) in enumerate(zip(images, qualities, modes, strict=True)):
        np.testing.assert_array_equal(to_rgb8_array(out[i]), pil_jpeg(rgb8, q, mode), err_msg=f"q={q} {mode}")


@pytest.mark.shared
def test_device_jpeg_bit_exact_on_kodak(device):
    for path in shared_images("test/Kodak24", 1):
        rgb8 = load_rgb8(path)[:251, :333]
        out = jpeg(_batch([rgb8] * 2, device), torch.tensor([10, 90]))
        for i, q in enumerate((10, 90)):
            np.testing.assert_array_equal(to_rgb8_array(out[i]), pil_jpeg(rgb8, q))


def test_degrade_matches_reference_without_noise(device):
    """sigma 0: device degrade (single and shifted double JPEG, all modes) equals the Pillow reference exactly."""
    images = [natural_image(40, 56, seed=i) for i in range(6)]
    params = {
        "sigma_255": torch.zeros(6),
        "quality": torch.tensor([10, 30, 50, 70, 90, 20]),
        "subsampling": torch.tensor([2, 0, 1, 2, 0, 1]),
        "quality2": torch.tensor([0, 80, 40, 0, 60, 95]),
        "shift_y": torch.tensor([0, 3, 7, 1, 0, 4]),
        "shift_x": torch.tensor([0, 5, 1, 6, 0, 2]),
    }
    params = {k: v.to(device) for k, v in params.items()}
    out = degrade(_batch(images, device), params)
    for i, rgb8 in enumerate(images):
        row = {k: v[i].item() for k, v in params.items()}
        expected = degrade_reference(rgb8, row, np.random.default_rng(0))
        np.testing.assert_array_equal(to_rgb8_array(out[i]), expected, err_msg=str(row))


def test_identity_when_no_noise_and_no_jpeg(device):
    clean = torch.rand(3, 3, 20, 24, device=device)  # deliberately not 8-bit values
    params = sample_params(
        3,
        replace(DegradeConfig(), p_neither=1.0, p_both=0, p_noise_only=0, p_jpeg_only=0),
        torch.Generator().manual_seed(0),
        device,
    )
    assert torch.equal(degrade(clean, params), clean)


def test_same_seed_same_batch_and_input_untouched(device):
    clean = _batch([natural_image(32, 32, seed=i) for i in range(8)], device)
    before = clean.clone()
    cfg = DegradeConfig()

    def draw(seed: int):
        return sample_and_degrade(
            clean, cfg, torch.Generator(device).manual_seed(seed), host_generator=torch.Generator().manual_seed(seed)
        )

    out1, params1 = draw(7)
    out2, params2 = draw(7)
    out3, _ = draw(8)
    assert torch.equal(out1, out2) and all(torch.equal(params1[k], params2[k]) for k in params1)
    assert not torch.equal(out1, out3)
    assert torch.equal(clean, before)
    assert out1.dtype == torch.float32 and out1.shape == clean.shape and out1.min() >= 0 and out1.max() <= 1


def test_gradient_flows_through_noise_quantisation_and_jpeg(device):
    clean = _batch([natural_image(24, 40, seed=i) for i in range(4)], device).requires_grad_(True)
    params = {
        "sigma_255": torch.tensor([10.0, 0.0, 25.0, 5.0]),
        "quality": torch.tensor([20, 50, 0, 90]),
        "subsampling": torch.tensor([2, 1, 0, 2]),
        "quality2": torch.tensor([70, 0, 0, 0]),
        "shift_y": torch.tensor([2, 0, 0, 0]),
        "shift_x": torch.tensor([1, 0, 0, 0]),
    }
    out = degrade(clean, {k: v.to(device) for k, v in params.items()}, torch.Generator(device).manual_seed(0))
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    grad = clean.grad
    assert torch.isfinite(grad).all()
    for i in range(4):
        assert grad[i].abs().sum() > 0, f"no gradient reached sample {i}"

    def corr(i: int) -> float:
        return torch.corrcoef(torch.stack([grad[i].flatten(), weights[i].flatten()]))[0, 1].item()

    assert corr(2) > 0.95  # noise + straight-through rounding: the upstream gradient passes (but where clipped)
    assert corr(3) > 0.5  # q90 4:2:0: luma passes, chroma is low-passed by the subsampling surrogate


def test_noise_level_is_sigma_on_the_255_scale(device):
    clean = torch.full((2, 3, 128, 128), 0.5, device=device)
    params = {
        k: torch.zeros(2, dtype=torch.long, device=device)
        for k in ("quality", "subsampling", "quality2", "shift_y", "shift_x")
    }
    params["sigma_255"] = torch.tensor([5.0, 25.0], device=device)
    out = degrade(clean, params, torch.Generator(device).manual_seed(1))
    std_255 = ((out - clean) * 255).flatten(1).std(dim=1)
    assert abs(std_255[0].item() - 5.0) < 0.2 and abs(std_255[1].item() - 25.0) < 0.6


def test_sampling_follows_the_config(device):
    cfg = DegradeConfig(
        p_noise_only=0.1,
        p_jpeg_only=0.2,
        p_both=0.3,
        p_neither=0.4,
        p_double_jpeg=0.5,
        subsampling={"4:4:4": 1.0},
        curriculum=False,
    )
    params = sample_params(20000, cfg, torch.Generator().manual_seed(0), device)
    noise, jpg = params["sigma_255"] > 0, params["quality"] > 0
    shares = [
        (noise & ~jpg).float().mean(),
        (~noise & jpg).float().mean(),
        (noise & jpg).float().mean(),
        (~noise & ~jpg).float().mean(),
    ]
    for share, expected in zip(shares, (0.1, 0.2, 0.3, 0.4), strict=True):
        assert abs(share.item() - expected) < 0.02
    assert params["quality"][jpg].min() >= cfg.quality_min and params["quality"].max() <= cfg.quality_max
    assert params["sigma_255"].max() <= cfg.sigma_max_255
    assert (params["subsampling"] == SUBSAMPLING["4:4:4"]).all()
    assert abs((params["quality2"] > 0)[jpg].float().mean().item() - 0.5) < 0.03
    assert ((params["quality2"] > 0) & ~jpg).sum() == 0


def test_curriculum_opens_ranges_from_light_to_full():
    cfg = DegradeConfig(curriculum=True, curriculum_fraction=0.5, curriculum_start=0.2)
    start, middle, end = ranges_at(cfg, 0.0), ranges_at(cfg, 0.25), ranges_at(cfg, 0.9)
    assert start.sigma_max_255 == pytest.approx(10.0) and start.quality_min == 78
    assert start.sigma_max_255 < middle.sigma_max_255 < end.sigma_max_255 == cfg.sigma_max_255
    assert start.quality_min > middle.quality_min > end.quality_min == cfg.quality_min
    assert ranges_at(replace(cfg, curriculum=False), 0.0).sigma_max_255 == cfg.sigma_max_255


@pytest.mark.parametrize(
    "change",
    [
        {"p_both": 0.9},
        {"sigma_min_255": -1.0},
        {"quality_min": 0},
        {"quality_max": 101},
        {"subsampling": {"4:1:1": 1.0}},
        {"p_double_jpeg": 1.5},
    ],
)
def test_bad_config_fails_with_a_clear_message(change):
    with pytest.raises(ValueError, match="must|need"):
        check_config(replace(DegradeConfig(), **change))


def _tiny_shards(tmp_path, count: int = 6):
    from shards.pack import pack

    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        Image.fromarray(natural_image(72, 80, seed=100 + i)).save(src / f"img{i}.png")
    pack(src, tmp_path / "shards", val_fraction=0.5, seed=0, min_shards=1)
    return tmp_path / "shards"


def test_valset_is_deterministic_and_degraded_by_libjpeg(tmp_path):
    from pipeline.valset import build_valset, center_crop, read_split_images

    shards = _tiny_shards(tmp_path)
    first = build_valset(shards, DegradeConfig(), seed=3, crop=64, variants=3)
    second = build_valset(shards, DegradeConfig(), seed=3, crop=64, variants=3)
    assert torch.equal(first.clean, second.clean) and torch.equal(first.degraded, second.degraded)
    assert first.clean.shape == (3 * len(read_split_images(shards, "val")), 3, 64, 64)
    image = center_crop(read_split_images(shards, "val")[0], 64)
    row = {k: v[1].item() for k, v in first.params.items()}
    expected = degrade_reference(image, row, np.random.default_rng([3, 1]))
    np.testing.assert_array_equal(first.degraded[1].permute(1, 2, 0).numpy(), expected)
    clean, degraded, params = next(first.batches(2, torch.device("cpu")))
    assert clean.dtype == torch.float32 and clean.shape[0] == 2 and 0 <= degraded.min() <= degraded.max() <= 1


def test_preview_writes_a_grid_where_device_and_libjpeg_agree(tmp_path):
    from pipeline.preview import QUALITIES, SIGMAS_255, preview_cell, render
    from pipeline.valset import read_split_images

    images = read_split_images(_tiny_shards(tmp_path), "train")
    grid = render(images, patch=32)
    assert grid.size == ((2 * 32 + 4) * len(QUALITIES), (32 + 14) * len(SIGMAS_255))
    for sigma, quality in ((25.0, 10), (5.0, 90), (0.0, 50)):
        ours, real = preview_cell(images[0][:32, :32], sigma, quality, seed=1)
        np.testing.assert_array_equal(ours, real)
