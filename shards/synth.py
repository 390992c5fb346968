"""A built-in training set with no downloads: `python -m shards.synth OUT --count N [--size 256] [--seed 0]`.

Images follow the dead-leaves model, a standard stand-in for natural-image statistics: occluding shapes (disks,
ellipses, rotated rectangles) with a power-law radius density p(r) ~ r^-3, which gives scale invariance and a
power spectrum falling roughly as 1/f^2. Leaves are textured (1/f noise, sinusoidal gratings, colour ramps or flat),
the background is a colour gradient, and some images get depth of field (the far leaves are blurred before the
near ones are painted). Everything is drawn from a numpy Generator seeded per image, so output is deterministic.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.command import run_command
from pipeline.io import save_png
from pipeline.shard_format import Manifest
from shards.pack import pack

SHAPES = ("disk", "ellipse", "rectangle")
TEXTURES = ("flat", "noise", "grating", "ramp")


def pink_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 noise with amplitude spectrum ~ 1/f (power ~ 1/f^2), zero mean, unit std."""
    freq_y = np.fft.fftfreq(size)[:, None]
    freq_x = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(freq_y, freq_x)
    radius[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) / radius
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(size, size))
    return (field / field.std()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur an (H, W, 3) float image with a Gaussian of `sigma` pixels (FFT, periodic borders)."""
    height, width = image.shape[:2]
    freq_y = np.fft.fftfreq(height)[:, None]
    freq_x = np.fft.rfftfreq(width)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (freq_y**2 + freq_x**2))[..., None]
    spectrum = np.fft.rfft2(image, axes=(0, 1)) * transfer
    return np.fft.irfft2(spectrum, s=(height, width), axes=(0, 1)).astype(np.float32)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 linear colour gradient in a random direction, like sky or a wall under light."""
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ramp = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None] + 0.5  # (H, W) in about [0, 1]
    start, stop = rng.uniform(0.05, 0.95, size=(2, 3)).astype(np.float32)
    return start + (stop - start) * ramp[..., None]


def leaf_radii(rng: np.random.Generator, count: int, r_min: float, r_max: float) -> np.ndarray:
    """Radii with density ~ r^-3 on [r_min, r_max] (inverse-CDF sampling)."""
    uniform = rng.uniform(size=count)
    return (r_min**-2 - uniform * (r_min**-2 - r_max**-2)) ** -0.5


def leaf_alpha(shape: str, u: np.ndarray, v: np.ndarray, radius: float, aspect: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at u = v = 0 (coordinates already rotated)."""
    if shape == "disk":
        distance = np.hypot(u, v) - radius
    elif shape == "ellipse":
        distance = (np.hypot(u / radius, v / (radius * aspect)) - 1.0) * radius * min(aspect, 1.0)
    else:
        distance = np.maximum(np.abs(u) - radius, np.abs(v) - radius * aspect)
    return np.clip(0.5 - distance, 0.0, 1.0)


def palette(rng: np.random.Generator, colours: int = 6) -> np.ndarray:
    """(colours, 3) dominant colours of one scene: mostly muted, with correlated channels like real reflectances."""
    luminance = rng.uniform(0.08, 0.9, (colours, 1))
    chroma = rng.normal(0.0, 0.12, (colours, 3))
    return np.clip(luminance + chroma, 0.0, 1.0).astype(np.float32)


def leaf_colour(
    rng: np.random.Generator, scene: np.ndarray, u: np.ndarray, v: np.ndarray, noise: np.ndarray, radius: float
) -> np.ndarray:
    """(h, w, 3) colour of one leaf: a scene colour, jittered, with one of the TEXTURES."""
    base = scene[rng.integers(len(scene))] * rng.uniform(0.6, 1.3) + rng.normal(0.0, 0.04, 3).astype(np.float32)
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    if texture == "noise":
        pattern = noise[..., None] * rng.uniform(0.03, 0.15) * rng.uniform(0.5, 1.0, 3)
    elif texture == "grating":
        period = rng.uniform(3.0, max(4.0, radius))
        pattern = (np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.03, 0.2))[..., None]
    elif texture == "ramp":
        pattern = (v / max(radius, 1.0))[..., None] * rng.uniform(-0.3, 0.3, 3)
    else:
        pattern = np.zeros((1, 1, 1), dtype=np.float32)
    return base + pattern


def paint_leaf(
    rng: np.random.Generator, canvas: np.ndarray, scene: np.ndarray, noise: np.ndarray, radius: float
) -> None:
    """Paint one random shape of `radius` on top of `canvas` (in place, occluding what is below)."""
    size = canvas.shape[0]
    centre_y, centre_x = rng.uniform(-radius, size + radius, 2)
    shape = SHAPES[rng.integers(len(SHAPES))]
    aspect, angle = rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
    top, bottom = int(max(centre_y - radius - 1, 0)), int(min(centre_y + radius + 2, size))
    left, right = int(max(centre_x - radius - 1, 0)), int(min(centre_x + radius + 2, size))
    if top >= bottom or left >= right:
        return
    dy = np.arange(top, bottom, dtype=np.float32)[:, None] - centre_y
    dx = np.arange(left, right, dtype=np.float32)[None, :] - centre_x
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    alpha = leaf_alpha(shape, u, v, radius, aspect)[..., None]  # (h, w, 1)
    colour = leaf_colour(rng, scene, u, v, noise[top:bottom, left:right], radius)
    region = canvas[top:bottom, left:right]
    region += alpha * (colour - region)


def render(seed: int, size: int = 256) -> np.ndarray:
    """One dead-leaves image: (size, size, 3) uint8 RGB, a pure function of (seed, size)."""
    rng = np.random.default_rng(seed)
    canvas = background(rng, size)
    noise = pink_noise(rng, size)
    scene = palette(rng)
    count = int(1000 * (size / 256) ** 2)
    radii = leaf_radii(rng, count, r_min=size / 64, r_max=size / 2)
    blur_at = int(count * rng.uniform(0.4, 0.8)) if rng.uniform() < 0.4 else -1
    for index, radius in enumerate(radii):
        if index == blur_at:
            canvas = gaussian_blur(canvas, rng.uniform(1.0, 4.0) * size / 256)
        paint_leaf(rng, canvas, scene, noise, float(radius))
    return np.rint(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)


def image_seed(seed: int, index: int) -> int:
    """The render seed of image `index` of a set made with `seed` (independent streams per image)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_one(index: int, folder: Path, seed: int, size: int) -> None:
    save_png(render(image_seed(seed, index), size), folder / f"leaves-{index:06d}.png")


def render_pngs(folder: str | Path, count: int, *, size: int = 256, seed: int = 0, workers: int = 1) -> None:
    """Write `count` dead-leaves PNGs to `folder` (also a clean test set for `python -m evaluate`)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    job = partial(_write_one, folder=Path(folder), seed=seed, size=size)
    with multiprocessing.Pool(workers) if workers > 1 else nullcontext() as pool:
        for done, _ in enumerate(pool.imap(job, range(count)) if pool else map(job, range(count)), 1):
            if done % 50 == 0 or done == count:
                print(f"synth: {done}/{count} images", file=sys.stderr)


def synth(out: str | Path, count: int, *, size: int = 256, seed: int = 0, workers: int = 1, **pack_kwargs) -> Manifest:
    """Render `count` images as PNGs in a temporary folder and pack them into `out`; return the manifest."""
    with tempfile.TemporaryDirectory(prefix="synth-") as folder:
        render_pngs(folder, count, size=size, seed=seed, workers=workers)
        return pack(folder, out, seed=seed, workers=workers, **pack_kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate and pack a dead-leaves image set (no downloads).")
    parser.add_argument("out", type=Path, help="output shard folder")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--min-shards", type=int, default=8)
    parser.add_argument("--png-only", action="store_true", help="write the PNGs to OUT, do not pack them")
    args = parser.parse_args(argv)
    if args.png_only:
        render_pngs(args.out, args.count, size=args.size, seed=args.seed)
        return
    manifest = synth(
        args.out, args.count, size=args.size, seed=args.seed, val_fraction=args.val_fraction, min_shards=args.min_shards
    )
    print({split: info["samples"] for split, info in manifest["splits"].items()})


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m shards.synth"))
