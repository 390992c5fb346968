"""Image quality metrics: the project's one implementation, on tensors in [0, 1].

Every function takes `(N, 3, H, W)` float tensors with values in [0, 1] on any device and returns one value per
image, shape `(N,)`, computed in float32 (no float64: MPS has none).

Conventions, as the denoising papers use them:
- Y channel: ITU-R BT.601 luma as Matlab's `rgb2ycbcr`, Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 on
  [0, 1] inputs, so Y lies in [16/255, 235/255]; the data range stays 1.
- `crop_border`: pixels removed from each side before measuring.
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, the mean
  over the "valid" region (no padding) and then over channels; equal to
  `skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Y_WEIGHTS_255 = (65.481, 128.553, 24.966)  # BT.601 luma weights on [0, 1] RGB, result on the 0-255 scale
Y_OFFSET_255 = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) BT.601 luma in [16/255, 235/255] (Matlab `rgb2ycbcr`)."""
    weights = torch.tensor(Y_WEIGHTS_255, dtype=torch.float32, device=image.device).view(1, 3, 1, 1)
    return ((image.float() * weights).sum(dim=1, keepdim=True) + Y_OFFSET_255) / 255.0


def _prepare(
    restored: torch.Tensor, clean: torch.Tensor, y_channel: bool, crop_border: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, cast to float32, optionally convert to Y and crop the border."""
    if restored.shape != clean.shape or restored.ndim != 4 or restored.shape[1] != 3:
        raise ValueError(f"expected two (N, 3, H, W) tensors of one shape, got {restored.shape} and {clean.shape}")
    restored, clean = restored.float(), clean.float()
    if y_channel:
        restored, clean = rgb_to_y(restored), rgb_to_y(clean)
    if crop_border > 0:
        b = crop_border
        restored, clean = restored[..., b:-b, b:-b], clean[..., b:-b, b:-b]
        if restored.numel() == 0:
            raise ValueError(f"crop_border {b} leaves no pixels")
    return restored, clean


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the [0, 1] scale -> PSNR in dB (data range 1); zero error gives +inf."""
    return 10.0 * torch.log10(1.0 / mse.float())


def psnr(restored: torch.Tensor, clean: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0) -> torch.Tensor:
    """PSNR in dB per image, (N,), of (N, 3, H, W) tensors in [0, 1]; the MSE is over all channels and pixels."""
    restored, clean = _prepare(restored, clean, y_channel, crop_border)
    mse = (restored - clean).pow(2).flatten(1).mean(dim=1)
    return psnr_from_mse(mse)


def gaussian_line(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, device: torch.device | None = None):
    """Normalised 1-D Gaussian, (size,) float32; its outer product is Matlab's `fspecial('gaussian', size, sigma)`."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    line = torch.exp(-(coords**2) / (2 * sigma**2))
    return line / line.sum()


def _blur_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel of (N, C, H, W), "valid" region only: (N, C, H - 10, W - 10)."""
    channels = x.shape[1]
    line = gaussian_line(device=x.device)
    x = F.conv2d(x, line.view(1, 1, 1, -1).expand(channels, 1, 1, SSIM_WINDOW), groups=channels)
    return F.conv2d(x, line.view(1, 1, -1, 1).expand(channels, 1, SSIM_WINDOW, 1), groups=channels)


def ssim(restored: torch.Tensor, clean: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0) -> torch.Tensor:
    """SSIM per image, (N,), of (N, 3, H, W) tensors in [0, 1]: mean SSIM map over valid pixels, then channels."""
    restored, clean = _prepare(restored, clean, y_channel, crop_border)
    if min(restored.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(restored.shape[-2:])}")
    stacked = torch.cat([restored, clean, restored * restored, clean * clean, restored * clean], dim=1)
    mu_x, mu_y, xx, yy, xy = _blur_valid(stacked).chunk(5, dim=1)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(2).mean(dim=2).mean(dim=1)


def metric_label(name: str, *, y_channel: bool = False, crop_border: int = 0) -> str:
    """Column label stating the convention, e.g. `psnr_rgb`, `ssim_y`, `psnr_y_crop4`."""
    label = f"{name}_{'y' if y_channel else 'rgb'}"
    return f"{label}_crop{crop_border}" if crop_border > 0 else label
