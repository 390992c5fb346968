"""infer.tiling: tiled against untiled for every runtime that runs here, fixed-size graphs, pooled statistics across
runtimes, tile cores and progress. Tiny models written to tmp files."""

from __future__ import annotations

import importlib.util
import itertools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import natural_image, randomise_, save_checkpoint, shared_images, tiny_nafnet

from evaluate.metrics import psnr
from infer.backends import open_backend
from infer.grid import cores, fit_axis
from infer.tiling import DEFAULT_OVERLAP, MIN_TILE, restore
from model import create_model
from model.condition import encode_condition
from model.pooling import PoolRequest, pooled_layers
from pipeline.io import load_rgb8, to_tensor
from pipeline.reference import degrade_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiles_match_untiled_for_a_finite_receptive_field(tmp_path):
    """ResNet with 2 blocks sees 6 px around each pixel < overlap // 4: tiled = untiled up to float rounding."""
    torch.manual_seed(0)
    model = randomise_(create_model("resnet", width=8, num_blocks=2), seed=3).eval()
    torch.save(
        {"model": model.state_dict(), "model_name": "resnet", "model_kwargs": {"width": 8, "num_blocks": 2}},
        tmp_path / "r.pt",
    )
    backend = open_backend(tmp_path / "r.pt", device="cpu")
    degraded = torch.stack([to_tensor(natural_image(150, 171, seed=s)) for s in (0, 1)])
    whole = restore(backend, degraded)  # small: whole image
    torch.testing.assert_close(whole, backend(degraded), atol=0, rtol=0)
    for tile, overlap in ((72, DEFAULT_OVERLAP), (100, 40), (64, 24)):
        tiled = restore(backend, degraded, tile=tile, overlap=overlap)
        assert (tiled - whole).abs().max() < 1e-3, (tile, overlap)


def test_an_onnx_file_of_one_fixed_size_is_tiled_at_that_size(tmp_path):
    """A graph exported for 1 x 3 x 48 x 48 only: larger images and batches go through in 48 px tiles; a ResNet
    with a 4 px receptive field then matches the untiled eager output."""
    torch.manual_seed(0)
    model = randomise_(create_model("resnet", width=8, num_blocks=1), seed=4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(1, 3, 48, 48),),
            tmp_path / "fixed.onnx",
            dynamo=False,
            opset_version=17,
            input_names=["degraded"],
            output_names=["restored"],
        )
    proto = onnx.load(str(tmp_path / "fixed.onnx"))
    onnx.helper.set_model_props(proto, {"stride": "1"})  # as export.onnx records it (default: 16, NAFNet's)
    onnx.save(proto, str(tmp_path / "fixed.onnx"))
    backend = open_backend(tmp_path / "fixed.onnx", device="cpu")
    assert backend.fixed_hw == (48, 48) and backend.fixed_batch == 1 and backend.stride == 1
    degraded = torch.stack([to_tensor(natural_image(70, 90, seed=s)) for s in (0, 1)])
    with torch.no_grad():
        expected = model(degraded).clamp(0, 1)
    assert (restore(backend, degraded) - expected).abs().max() < 1e-3


RUNTIMES_HERE = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def whole_and_tiled(backend, clean8: np.ndarray, sigma_255: float, quality: int) -> tuple[torch.Tensor, ...]:
    """Clean, then restored whole, in MIN_TILE tiles with the default statistics, and in tiles pooling alone."""
    params = {"sigma_255": sigma_255, "quality": quality, "subsampling": 2, "quality2": 0}
    degraded8 = degrade_reference(clean8, params, np.random.default_rng(0))
    clean, degraded = to_tensor(clean8)[None], to_tensor(degraded8)[None]
    tiled = restore(backend, degraded, tile=MIN_TILE, overlap=DEFAULT_OVERLAP)
    local = restore(backend, degraded, tile=MIN_TILE, overlap=DEFAULT_OVERLAP, stats="local")
    return clean, backend(degraded), tiled, local


@pytest.mark.parametrize("runtime", RUNTIMES_HERE)
def test_tiled_nafnet_within_0_05_db_at_the_smallest_auto_tile(runtime):
    """The shipped NAFNet pools globally, so tiles differ slightly; at MIN_TILE (the smallest tile automatic tiling
    uses), the default overlap and the default pooling statistics, the PSNR against the clean image moves by less
    than 0.05 dB, in every runtime (the exported graph's pooled I/O included), and the statistics bring the tiled
    output closer to the untiled one than tiles pooling alone."""
    backend = open_backend(None, device="cpu", runtime=runtime)
    assert backend.pool_channels > 0, backend.name
    clean8 = natural_image(MIN_TILE, MIN_TILE + 80, seed=7)
    clean, whole, tiled, local = whole_and_tiled(backend, clean8, sigma_255=25.0, quality=50)
    assert (tiled - whole).abs().max() > 0  # it did tile
    difference_db = (psnr(tiled, clean) - psnr(whole, clean)).abs().item()
    assert difference_db < 0.05, difference_db
    assert psnr(tiled, whole) > psnr(local, whole)
    if runtime == "torch":
        assert all(layer.request is None for layer in pooled_layers(backend.module))  # nothing left behind


@pytest.mark.shared
def test_tiled_nafnet_on_a_photo_within_0_05_db():
    """The same on a real photo (Kodak24, 500 x 500, nine 256 px tiles), where tiles pooling alone move PSNR by
    tenths of a dB (docs/infer.md), through the default runtime."""
    backend = open_backend(None, device="cpu")
    clean8 = load_rgb8(shared_images("test/Kodak24", 1)[0])
    clean, whole, tiled, local = whole_and_tiled(backend, clean8, sigma_255=10.0, quality=90)
    assert (psnr(tiled, clean) - psnr(whole, clean)).abs().item() < 0.05
    assert psnr(tiled, whole) > psnr(local, whole)


def test_pooled_io_agrees_across_runtimes(tmp_path):
    """A conditioned tiny NAFNet through `export.onnx`: the graph's pooled sums, its output with injected means, and
    a tiled restoration with statistics passes equal the eager checkpoint's in onnxruntime and OpenVINO, and in
    onnxruntime for an earlier graph whose pooled inputs carried defaults."""
    from export.onnx import export_onnx
    from export.parity import load_source

    checkpoint = save_checkpoint(tiny_nafnet(conditioned=True), tmp_path / "c.pt", conditioned=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(load_source(checkpoint), tmp_path / "c.onnx", conditioned=True, pooled_io=True)
    eager = open_backend(checkpoint, device="cpu")
    legacy = onnx.load(str(tmp_path / "c.onnx"))  # as earlier exports were: pooled inputs with stored defaults
    defaults = {"pooled_means": np.zeros(eager.pool_channels, np.float32), "pooled_mix": np.ones(1, np.float32)}
    defaults["pooled_core"] = np.array([[0, 2**30, 0, 2**30]], np.int64)
    legacy.graph.initializer.extend(onnx.numpy_helper.from_array(value, name) for name, value in defaults.items())
    onnx.save(legacy, str(tmp_path / "legacy.onnx"))
    others = [open_backend(tmp_path / "c.onnx", device="cpu", runtime=r) for r in RUNTIMES_HERE[1:]]
    others.append(open_backend(tmp_path / "legacy.onnx", device="cpu", runtime="onnxruntime"))
    degraded = to_tensor(natural_image(44, 60, seed=3))[None]
    condition = encode_condition(1, 20.0, 40.0)
    core = torch.tensor([[8, 36, 0, 60]])
    reference = PoolRequest(core)
    eager(degraded, condition, pooling=reference)
    means = reference.sums / (48 * 60)
    injected = eager(degraded, condition, pooling=PoolRequest(core, means))
    tiled = restore(eager, degraded, tile=24, overlap=8, condition=condition, stats="passes:2")
    for backend in others:
        assert backend.pool_channels == eager.pool_channels > 0, backend.name
        request = PoolRequest(core)
        backend(degraded, condition, pooling=request)
        torch.testing.assert_close(request.sums, reference.sums, rtol=1e-4, atol=1e-4, msg=backend.name)
        torch.testing.assert_close(
            backend(degraded, condition, pooling=PoolRequest(core, means)),
            injected,
            atol=2e-5,
            rtol=0,
            msg=backend.name,
        )
        torch.testing.assert_close(
            restore(backend, degraded, tile=24, overlap=8, condition=condition, stats="passes:2"),
            tiled,
            atol=2e-5,
            rtol=0,
            msg=backend.name,
        )


def test_tiles_cover_the_image_once_and_report_progress():
    """Tile cores partition each axis (each pixel's features count once in the statistics), `fit_axis` covers an
    axis with as few tiles as the largest tile would need, and `progress` counts every tile of every pass."""
    for starts, size in (([0, 96, 192, 256], 128), ([0], 80), ([0, 112], 160)):
        found = cores(starts, size, 16)
        covered = [
            pixel
            for start, (low, high) in zip(starts, found, strict=True)
            for pixel in range(start + low, start + high)
        ]
        assert covered == list(range(starts[-1] + size)) and all(low % 16 == 0 for low, _ in found)
    assert fit_axis(4000, 1024, 32, 16) == 1024 and fit_axis(3000, 1024, 32, 16) == 1024
    assert fit_axis(1100, 1024, 32, 16) == 576 and fit_axis(700, 1024, 32, 16) == 704
    backend = open_backend(save_checkpoint(tiny_nafnet(), Path(tempfile.mkdtemp()) / "t.pt"), device="cpu")
    seen = []
    restore(
        backend,
        torch.rand(1, 3, 70, 90),
        tile=32,
        overlap=8,
        stats="sample:2+passes:2",
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] and all(b[0] >= a[0] for a, b in itertools.pairwise(seen))
    with pytest.raises(ValueError, match="pooling statistics"):
        restore(backend, torch.rand(1, 3, 70, 90), tile=32, overlap=8, stats="every:3")
