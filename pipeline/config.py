"""Typed configuration of the data pipeline; `train.config.TrainConfig` nests these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoaderConfig:
    backend: str = "auto"  # auto (DALI when it imports and CUDA is present, else torch) | torch | dali
    patch_size: int = 96  # square training crops, pixels
    batch_size: int = 16  # crops per batch
    crops_per_image: int = 4  # crops cut from each decoded image (amortises decode)
    workers: int = 2  # torch DataLoader workers / DALI CPU threads
    prefetch: int = 2  # step groups prepared ahead per torch worker; DALI prefetch queue depth
    seed: int = 0
    max_bad_share: float = 0.02  # unreadable samples skipped (counted, warned) up to this share; past it the run stops


@dataclass
class DegradeConfig:
    sigma_min_255: float = 0.0  # Gaussian sigma range, 0-255 scale
    sigma_max_255: float = 50.0
    quality_min: int = 10  # JPEG quality range, 1-100
    quality_max: int = 95
    p_noise_only: float = 0.25  # probabilities of the four mixes; they must sum to 1
    p_jpeg_only: float = 0.25
    p_both: float = 0.4
    p_neither: float = 0.1
    subsampling: dict[str, float] = field(default_factory=lambda: {"4:2:0": 0.7, "4:2:2": 0.1, "4:4:4": 0.2})
    p_double_jpeg: float = 0.2  # of JPEG samples: compress again at a quality drawn anew, block grid shifted
    p_unclipped: float = 0.0  # of noise-only samples: keep the float noise unclipped and unquantised (the AWGN
    # of denoising benchmarks, evaluate's anchor protocol); a real file is always clipped and quantised
    curriculum: bool = True  # ranges grow from light to heavy over `curriculum_fraction` of training
    curriculum_fraction: float = 0.3
    curriculum_start: float = 0.2  # fraction of the full range at progress 0
    codec: str = "auto"  # device JPEG, all bit-exact: auto | compiled (torch.compile) | float64 | int32 (eager)
