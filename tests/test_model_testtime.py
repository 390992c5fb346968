"""model.testtime: local pooling windows (TLC) and the x8 self-ensemble."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_NAFNET, randomise_, tiny_nafnet

from model import create_model
from model.testtime import LocalPool, SelfEnsemble, with_local_pooling


@pytest.mark.parametrize("window", [1, 3, 5])
def test_local_pool_is_the_box_mean_clipped_at_the_borders(window):
    features = torch.rand(2, 3, 7, 9)
    expected = F.avg_pool2d(features, window, stride=1, padding=window // 2, count_include_pad=False)
    torch.testing.assert_close(LocalPool(window)(features), expected)


def test_a_window_over_the_whole_input_is_the_whole_image_model_and_a_small_one_is_not():
    model = randomise_(create_model("nafnet", **TINY_NAFNET)).eval()
    with torch.no_grad():  # weights of about 1 instead of 0.1: the attention's statistics then change the output
        for param in model.parameters():
            param.mul_(10)
    degraded = torch.rand(1, 3, 40, 52) * torch.linspace(0, 1, 52)  # statistics that change across the image
    with torch.no_grad():
        whole = model(degraded)
        torch.testing.assert_close(with_local_pooling(model, 4096)(degraded), whole)
        assert (with_local_pooling(model, 16)(degraded) - whole).abs().max() > 1e-4
    assert all(not isinstance(m, LocalPool) for m in model.modules())  # the original is left as it was


def test_the_self_ensemble_commutes_with_flips_and_quarter_turns():
    """Averaging over the 8 transforms, each turned back, makes the result equivariant: it fails if an inverse is
    wrong. (The tiny model alone is not: its output of a turned input differs from the turned output.)"""
    model = tiny_nafnet(conditioned=True).eval()
    ensemble = SelfEnsemble(model)
    degraded = torch.rand(1, 3, 24, 32)
    condition = torch.tensor([[0.1, 1.0, 0.3, 1.0]])
    with torch.no_grad():
        turned = torch.rot90(ensemble(degraded, condition), 1, (-2, -1))
        torch.testing.assert_close(ensemble(torch.rot90(degraded, 1, (-2, -1)), condition), turned)
        torch.testing.assert_close(ensemble(degraded.flip(-1), condition), ensemble(degraded, condition).flip(-1))
        plain = torch.rot90(model(degraded, condition), 1, (-2, -1))
        assert (model(torch.rot90(degraded, 1, (-2, -1)), condition) - plain).abs().max() > 1e-5
