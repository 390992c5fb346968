"""Loaders: the `clean` contract, crops that really come from the shards, sharding, determinism, seeking, guards.

Shard folders are packed in the test from tiny "coded" PNGs whose pixel (y, x) of image i is (i, y, x), so any
crop can be traced back to its source window up to the flip/rotation the loader applied.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import make_loader
from pipeline.config import LoaderConfig
from pipeline.loader import resolve_backend
from pipeline.loader_dali import device_batches
from pipeline.shard_format import MANIFEST, read_manifest
from pipeline.stream import epoch_order
from shards.pack import pack

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
DALI_MARKS = [pytest.mark.dali, pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed (.[dali])")]


def dali(test):
    """Marks a DALI test (`-m dali` selects it) and skips it where DALI is not installed."""
    for mark in DALI_MARKS:
        test = mark(test)
    return test


HEIGHT, WIDTH = 40, 48  # coded images: small, not square, every coordinate fits in a byte


def coded_image(ident: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 image whose pixel (y, x) is (ident, y, x)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.full((height, width), ident), y, x], axis=2).astype(np.uint8)


def pack_images(folder: Path, images: dict[str, np.ndarray], min_shards: int) -> Path:
    """Pack `images` (file name -> (H, W, 3) uint8) with the real packer; all go to the train split."""
    source = folder / "src"
    source.mkdir(parents=True)
    for name, image in images.items():
        Image.fromarray(image, "RGB").save(source / name, quality=95)
    pack(source, folder / "shards", val_fraction=0.0, min_shards=min_shards, min_side=16)
    return folder / "shards"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 coded PNG images in 4 shards of 6."""
    images = {f"{ident:02d}.png": coded_image(ident) for ident in range(1, 25)}
    return pack_images(tmp_path_factory.mktemp("coded"), images, min_shards=4)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEG (stored as is) and PNG samples of different sizes in 2 shards."""
    rng = np.random.default_rng(0)
    images = {
        f"{i}.{ext}": rng.integers(0, 256, (24 + 8 * i, 56 - 4 * i, 3), dtype=np.uint8)
        for i in range(6)
        for ext in ("jpg", "png")
    }
    return pack_images(tmp_path_factory.mktemp("mixed"), images, min_shards=2)


def config(**overrides) -> LoaderConfig:
    base = dict(backend="torch", patch_size=16, batch_size=8, crops_per_image=2, workers=0)
    return LoaderConfig(**{**base, **overrides})


def source_window(crop: np.ndarray, patch_size: int) -> tuple[int, int, int] | None:
    """(ident, top, left) of the coded-source window a (3, P, P) uint8 crop equals up to flip/rotation, or None."""
    hwc = crop.transpose(1, 2, 0)
    for turns, mirror in itertools.product(range(4), (False, True)):
        back = np.rot90(hwc, k=turns)
        back = back[:, ::-1] if mirror else back
        ident, top, left = (int(v) for v in back[0, 0])
        if ident < 1 or top + patch_size > HEIGHT or left + patch_size > WIDTH:
            continue
        if np.array_equal(back, coded_image(ident)[top : top + patch_size, left : left + patch_size]):
            return ident, top, left
    return None


def take(loader, count: int) -> list[torch.Tensor]:
    """`count` batches, then the loader closed: a DALI pipeline left running while a later test forks DataLoader
    workers can deadlock them."""
    try:
        return [next(loader) for _ in range(count)]
    finally:
        loader.close()


def check_contract(batches: list[torch.Tensor], cfg: LoaderConfig, device: torch.device) -> None:
    """The `clean` contract, and every crop a true window of a source image."""
    for clean in batches:
        assert clean.shape == (cfg.batch_size, 3, cfg.patch_size, cfg.patch_size)
        assert clean.dtype == torch.float32 and clean.device.type == device.type and clean.is_contiguous()
        assert clean.min().item() >= 0.0 and clean.max().item() <= 1.0
        crops = (clean * 255).round().to(torch.uint8).cpu().numpy()
        windows = [source_window(crop, cfg.patch_size) for crop in crops]
        assert None not in windows, "a crop is not a flipped/rotated window of any source image"


def test_torch_contract_and_crops_from_sources(shard_dir, device):
    cfg = config(workers=2)
    batches = take(make_loader(shard_dir, "train", cfg, device), 12)  # 12 x 8 crops > 2 passes of 24 x 2 crops
    check_contract(batches, cfg, device)
    flat = torch.cat(batches).mul(255).round().to(torch.uint8).cpu().numpy()
    windows = [source_window(crop, cfg.patch_size) for crop in flat]
    assert {window[0] for window in windows} == set(range(1, 25)), "two passes did not visit every image"
    assert len(set(windows)) > len(windows) // 2, "crop positions are not random"


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=DALI_MARKS)])
def test_crops_are_flipped_and_rotated(shard_dir, device, backend):
    cfg = config(backend=backend, batch_size=16)
    crops = torch.cat(take(make_loader(shard_dir, "train", cfg, device), 4)).mul(255).round().to(torch.uint8)
    # The x code (channel 2) grows along +W in an unturned crop: count the directions it runs along, and mirrors.
    directions, mirrored = Counter(), 0
    for crop in crops.cpu().numpy().astype(int):
        along_w, along_h = np.sign(crop[2, 0, 1] - crop[2, 0, 0]), np.sign(crop[2, 1, 0] - crop[2, 0, 0])
        directions[(along_w, along_h)] += 1
        y_along_w, y_along_h = np.sign(crop[1, 0, 1] - crop[1, 0, 0]), np.sign(crop[1, 1, 0] - crop[1, 0, 0])
        mirrored += int(along_w * y_along_h - along_h * y_along_w < 0)  # orientation of the (x, y) frame
    assert len(directions) == 4, f"expected x to run along all 4 directions, saw {dict(directions)}"
    assert 0 < mirrored < len(crops), f"{mirrored} of {len(crops)} crops mirrored"


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_same_seed_same_batches(shard_dir, device, workers):
    cfg = config(workers=workers, seed=3)
    first, second = (take(make_loader(shard_dir, "train", cfg, device), 6) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = take(make_loader(shard_dir, "train", config(workers=workers, seed=4), device), 6)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


BACKENDS = ["torch", pytest.param("dali", marks=DALI_MARKS)]


def idents(batches: list[torch.Tensor], patch_size: int) -> list[int]:
    crops = torch.cat(batches).mul(255).round().to(torch.uint8).cpu().numpy()
    return [source_window(crop, patch_size)[0] for crop in crops]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_split_and_each_epoch_reads_every_sample_once(shard_dir, device, backend):
    """2 ranks x 3 images per step over 24 images: in each epoch (4 steps) the ranks together read each image once."""
    cfg = config(backend=backend, batch_size=3, crops_per_image=1)
    seen = [idents(take(make_loader(shard_dir, "train", cfg, device, rank, 2), 8), 16) for rank in range(2)]
    for epoch in range(2):
        both = seen[0][epoch * 12 : (epoch + 1) * 12] + seen[1][epoch * 12 : (epoch + 1) * 12]
        assert Counter(both) == Counter(range(1, 25)), f"epoch {epoch} is not a partition of the images"
    assert seen[0][:12] != seen[0][12:], "a rank must not read the same images in the same order every epoch"


def test_epoch_order_is_a_fresh_permutation_each_epoch():
    orders = [epoch_order(0, epoch, 16).tolist() for epoch in range(4)]
    assert all(sorted(order) == list(range(16)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4, "epochs must visit samples in different orders"
    assert epoch_order(1, 0, 16).tolist() != orders[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_started_at_step_k_yields_the_kth_batch_bit_exact(shard_dir, device, backend):
    """A loader started at k yields, bit for bit, the batches a loader started at 0 yields from its k-th on
    (k = 5 starts in the middle of a 2-crop step group; 2 ranks so the rank enters the draw)."""
    cfg = config(backend=backend, workers=2, crops_per_image=2, seed=5)
    for rank in range(2):
        from_zero = take(make_loader(shard_dir, "train", cfg, device, rank, 2), 9)
        from_k = take(make_loader(shard_dir, "train", cfg, device, rank, 2, start_step=5), 4)
        assert all(torch.equal(a, b) for a, b in zip(from_zero[5:], from_k, strict=True))
    assert not torch.equal(from_zero[0], from_zero[2]), "steps of different groups must differ"


def images_read(loader) -> int:
    """Images the loader has read from the shards so far (torch: the skip counter's attempts; DALI: its source)."""
    return loader.counter.attempted if hasattr(loader, "counter") else loader.source.reads


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_at_step_1000_reads_what_step_1_reads(shard_dir, device, backend):
    """Seeking is O(1): before the first batch, a loader started at step 1000 has read as many images as one started
    at step 1 (one step group; DALI also fills its prefetch queue), not 1000 steps' worth."""
    cfg = config(backend=backend, workers=0, crops_per_image=2, batch_size=4)
    reads = {}
    for start in (1, 1000):
        loader = make_loader(shard_dir, "train", cfg, device, start_step=start)
        next(loader)
        reads[start] = images_read(loader)
        loader.close()
    assert reads[1] == reads[1000], reads
    assert 0 < reads[1] <= cfg.batch_size * (cfg.prefetch + 1), reads


def test_refuses_images_smaller_than_patch(shard_dir, device):
    with pytest.raises(ValueError, match=r"as small as 48x40 px.*patch_size=41"):
        make_loader(shard_dir, "train", config(patch_size=41), device)


def test_rejects_bad_backend_rank_and_auto_without_cuda(shard_dir, device):
    with pytest.raises(ValueError, match="unknown loader.backend 'tf'"):
        make_loader(shard_dir, "train", config(backend="tf"), device)
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        make_loader(shard_dir, "train", config(), device, rank=2, world_size=2)
    expected = "dali" if HAS_DALI and torch.cuda.is_available() else "torch"
    assert resolve_backend("auto") == expected


@dali
def test_dali_contract_and_crops_from_sources(shard_dir, device):
    cfg = config(backend="dali", workers=2, crops_per_image=3)
    batches = take(make_loader(shard_dir, "train", cfg, device), 15)  # 5 reader batches of 8: past an epoch of 24
    check_contract(batches, cfg, device)
    for group in range(0, 15, 3):  # the 3 batches of one DALI iteration hold crops of the same 8 images
        idents = [
            [source_window(c, 16)[0] for c in b.mul(255).round().byte().cpu().numpy()]
            for b in batches[group : group + 3]
        ]
        assert idents[0] == idents[1] == idents[2] and len(set(idents[0])) == 8


@dali
def test_backends_yield_the_same_kind_of_batch(mixed_dir, device):
    """JPEG and PNG samples of several sizes: both backends give the same shape, dtype, device and range."""
    cfg = config(patch_size=20, batch_size=6, crops_per_image=3)
    torch_batches = take(make_loader(mixed_dir, "train", cfg, device), 4)
    dali_batches = take(make_loader(mixed_dir, "train", replace(cfg, backend="dali"), device), 4)
    for clean in torch_batches + dali_batches:
        kind = (clean.shape, clean.dtype, clean.device)
        assert kind == (torch.Size([6, 3, 20, 20]), torch.float32, torch_batches[0].device)
        assert clean.min().item() >= 0.0 and clean.max().item() <= 1.0 and clean.std().item() > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_unshuffled_shards_of_an_older_packer_load(shard_dir, tmp_path, device, backend):
    """The loaders draw their own whole-split order: shards packed without shuffling (as an older packer wrote
    them, with no DALI buffer to mix them) still give batches of 8 distinct images."""
    folder = tmp_path / "plain"
    shutil.copytree(shard_dir, folder)
    manifest = read_manifest(folder)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "shuffled": False}))
    batch = take(make_loader(folder, "train", config(backend=backend), device), 1)[0]
    assert batch.shape == (8, 3, 16, 16) and len(set(idents([batch], 16))) == 8


def test_dali_wrapper_asserts_fixed_batch_shape():
    cfg = config(batch_size=4, crops_per_image=2)
    wrong = iter([[{"patches": torch.zeros(4, 2, 3, 16, 15, dtype=torch.uint8)}]])
    with pytest.raises(RuntimeError, match=r"shape \(4, 2, 3, 16, 15\), expected \(4, 2, 3, 16, 16\)"):
        next(device_batches(wrong, cfg, torch.device("cpu"), None))
