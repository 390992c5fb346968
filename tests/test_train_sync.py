"""The training step never reads the device, and launches a bounded number of ops (a sync-free step)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, natural_image

from pipeline.config import DegradeConfig
from pipeline.degrade import sample_and_degrade
from pipeline.sync import HostReadError, NoDeviceReads, OpCounter
from train.config import load_config
from train.step import build_state, train_step

FLOAT64_OPS_MAX = 800  # one eager sample_and_degrade call at most (five JPEG groups); README: ops per step


def _state_and_batch(device: torch.device, overrides: list[str]):
    cfg = load_config(device.type, sets=TINY + overrides)
    clean = torch.stack([torch.from_numpy(natural_image(32, 32, i)).permute(2, 0, 1) for i in range(4)])
    return cfg, build_state(cfg, device), clean.to(device).float().div(255)


@pytest.mark.parametrize("extra", [[], ["model.name=nafnet", "model.kwargs={width: 8}", "optim.ema_decay=0.999"]])
def test_train_step_reads_nothing_back_from_the_device(device, extra):
    cfg, state, clean = _state_and_batch(device, extra + ["optim.clip_grad_norm=1.0", "degrade.codec=float64"])
    train_step(state, clean, cfg, 1e-3, None)  # warm (lazy optimizer state)
    with NoDeviceReads():
        loss, _params = train_step(state, clean, cfg, 1e-3, None)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_step(state, clean, cfg, 1e-3, None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).all()


def test_the_guard_catches_a_device_read(device):
    x = torch.ones(3, device=device)
    # (a CPU tensor's .tolist() bypasses the dispatcher: on CUDA the driver's sync debug mode catches it)
    for read in (lambda: x.sum().item(), lambda: bool(x.any()), lambda: x.nonzero()):
        with pytest.raises(HostReadError), NoDeviceReads():
            read()


def test_gemm_codec_launches_a_fraction_of_the_butterflies_ops(device):
    """The float64 codec does each DCT pass as one GEMM: a fifth of the ops of libjpeg's butterflies (int32)."""
    clean = torch.rand(32, 3, 64, 64, device=device)
    totals = {}
    for codec in ("float64", "int32"):
        cfg = DegradeConfig(curriculum=False, codec=codec)
        counts = []
        for seed in range(4):  # different mixes of subsampling modes, double JPEG and untouched samples
            with OpCounter() as counter:
                sample_and_degrade(
                    clean, cfg, torch.Generator(device).manual_seed(seed), 1.0, torch.Generator().manual_seed(seed)
                )
            counts.append(counter.total)
        totals[codec] = max(counts)
    assert totals["float64"] <= FLOAT64_OPS_MAX and totals["float64"] * 4 < totals["int32"], totals
