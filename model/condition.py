"""The optional strength control: a model conditioned on the noise sigma and the JPEG quality, each may be withheld.

A condition is a `(N, 4)` float tensor `[sigma_255 / 50, sigma known, (100 - quality) / 90, quality known]`:
a withheld value is 0 with its flag 0, so an all-zero row asks for blind restoration. "No JPEG" is a known
quality with strength 0 (quality 100 and above count as no JPEG). Larger sigma / lower quality ask for more cleaning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

COND_DIM = 4
SIGMA_SCALE_255 = 50.0


def encode_condition(
    n: int,
    sigma_255: float | torch.Tensor | None = None,
    quality: float | torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Condition rows for `n` images; None withholds that value (blind). `quality` 0 or >= 100 means no JPEG."""
    cond = torch.zeros(n, COND_DIM, device=device)
    if sigma_255 is not None:
        cond[:, 0] = torch.as_tensor(sigma_255, dtype=torch.float32, device=device) / SIGMA_SCALE_255
        cond[:, 1] = 1
    if quality is not None:
        q = torch.as_tensor(quality, dtype=torch.float32, device=device)
        cond[:, 2] = torch.where((q <= 0) | (q >= 100), torch.zeros_like(q), (100 - q) / 90)
        cond[:, 3] = 1
    return cond


def condition_from_params(
    params: Mapping[str, torch.Tensor], generator: torch.Generator | None, p_withheld: float
) -> torch.Tensor:
    """Training conditions from the drawn degradation parameters, each value withheld with probability
    `p_withheld` independently (so one model learns blind and conditioned restoration). A double JPEG is
    described by its lower quality."""
    quality, quality2 = params["quality"], params["quality2"]
    lower = torch.where(quality2 > 0, torch.minimum(quality, quality2), quality)
    cond = encode_condition(len(quality), params["sigma_255"].float(), lower, quality.device)
    keep = torch.rand(len(quality), 2, generator=generator, device=quality.device) >= p_withheld  # (N, 2)
    return cond * keep.repeat_interleave(2, dim=1)


class FiLM(nn.Module):
    """Feature-wise scale and shift from a condition: `x * (1 + scale) + shift` per channel, at several points.

    The last layer starts at zero, so a freshly added FiLM leaves a trained blind model unchanged.
    """

    def __init__(self, channels: list[int], hidden: int = 64) -> None:
        super().__init__()
        self.channels = list(channels)
        self.mlp = nn.Sequential(nn.Linear(COND_DIM, hidden), nn.GELU(), nn.Linear(hidden, 2 * sum(channels)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, condition: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One `(scale, shift)` pair of `(N, C, 1, 1)` tensors per point, in the order of `channels`."""
        out = self.mlp(condition.float())
        pairs, start = [], 0
        for c in self.channels:
            scale, shift = out[:, start : start + 2 * c].chunk(2, dim=1)
            pairs.append((scale[:, :, None, None], shift[:, :, None, None]))
            start += 2 * c
        return pairs
