"""Loaders: the `clean` contract, crops that really come from the shards, sharding, determinism, start-up guards.

Shard folders are packed in the test from tiny "coded" PNGs whose pixel (y, x) of image i is (i, y, x), so any
crop can be traced back to its source window up to the flip/rotation the loader applied.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pipeline import make_loader
from pipeline.config import LoaderConfig
from pipeline.loader import resolve_backend
from pipeline.loader_dali import _to_device as dali_to_device
from pipeline.loader_torch import patch_dataloader, reader_shards
from shards.format import MANIFEST, index_name, read_manifest, sample_key, shard_name, split_shards

HAS_DALI = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed (pip install -e .[dali])")

HEIGHT, WIDTH = 40, 48  # coded images: small, not square, every coordinate fits in a byte


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def coded_image(ident: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 image whose pixel (y, x) is (ident, y, x)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([np.full((height, width), ident), y, x], axis=2).astype(np.uint8)


def write_shards(folder: Path, count: int, num_shards: int, shuffled: bool = True, side: int | None = None) -> Path:
    """A shard folder in the `shards.format` layout (tars, wds2idx indexes, manifest) of coded PNG images."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = (side, side) if side else (HEIGHT, WIDTH)
    entries = []
    for shard in range(num_shards):
        name, idents = shard_name("train", shard), range(shard + 1, count + 1, num_shards)
        with wds.TarWriter(str(folder / name)) as sink:
            for ident in idents:
                png = io.BytesIO()
                Image.fromarray(coded_image(ident, height, width), "RGB").save(png, format="PNG")
                meta = json.dumps({"ident": ident}).encode()
                sink.write({"__key__": sample_key(ident), "png": png.getvalue(), "json": meta})
        wds2idx = Path(sys.executable).parent / "wds2idx"
        subprocess.run([str(wds2idx), str(folder / name), str(folder / index_name(name))], check=True, capture_output=True)
        entries.append({"name": name, "split": "train", "samples": len(idents), "bytes": 0, "sha256": "", "index": index_name(name)})
    split = {"samples": count, "shards": num_shards, "bytes": 0, "min_width": width, "min_height": height}
    manifest = {"shards": entries, "splits": {"train": split}, "shuffled": shuffled}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), count=24, num_shards=4)


def config(**overrides) -> LoaderConfig:
    base = dict(backend="torch", patch_size=16, batch_size=8, crops_per_image=2, workers=0, shuffle_buffer=16)
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
    return [next(loader) for _ in range(count)]


def check_contract(batches: list[torch.Tensor], cfg: LoaderConfig, device: torch.device) -> None:
    """The `clean` contract, and every crop a true window of a source image."""
    for clean in batches:
        assert clean.shape == (cfg.batch_size, 3, cfg.patch_size, cfg.patch_size)
        assert clean.dtype == torch.float32 and clean.device.type == device.type
        assert 0.0 <= clean.min().item() and clean.max().item() <= 1.0
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


def test_torch_augments_flip_and_rotation(shard_dir, device):
    cfg = config(batch_size=16)
    crops = torch.cat(take(make_loader(shard_dir, "train", cfg, device), 4)).mul(255).round().to(torch.uint8)
    # In a coded crop, x grows along +W when unrotated and unflipped; other orientations show other gradients.
    gradients = {(int(np.sign(c[2, 0, 1] - c[2, 0, 0])), int(np.sign(c[2, 1, 0] - c[2, 0, 0]))) for c in crops.numpy().astype(int)}
    assert len(gradients) == 4, f"expected x to run along all 4 directions, saw {gradients}"


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_same_seed_same_batches(shard_dir, device, workers):
    cfg = config(workers=workers, seed=3)
    first, second = (take(make_loader(shard_dir, "train", cfg, device), 6) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = take(make_loader(shard_dir, "train", config(workers=workers, seed=4), device), 6)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_one_pass_reads_each_sample_once(shard_dir):
    """2 ranks x 2 workers over 4 shards: one pass of the real DataLoaders yields each sample exactly once."""
    cfg = config(workers=2, batch_size=1, crops_per_image=1)
    keys, idents = Counter(), Counter()
    for rank in range(2):
        loader = patch_dataloader(split_shards(shard_dir, "train"), cfg, torch.device("cpu"), rank, 2, passes=1)
        for patches, batch_keys in loader:
            keys.update(batch_keys)
            idents.update(source_window(crop, cfg.patch_size)[0] for crop in patches.numpy())
    assert keys == Counter(sample_key(ident) for ident in range(1, 25))
    assert idents == Counter(range(1, 25))


def test_shard_order_reshuffles_and_partitions_each_pass():
    orders = [reader_shards(16, 0, pass_index, 0, 1, 0, 1) for pass_index in range(4)]
    assert all(sorted(order) == list(range(16)) for order in orders)
    assert len({tuple(order) for order in orders}) == 4, "passes must visit shards in different orders"
    for pass_index in range(3):
        readers = [reader_shards(16, 7, pass_index, rank, 2, worker, 3) for rank in range(2) for worker in range(3)]
        assert sorted(itertools.chain(*readers)) == list(range(16))


def test_refuses_fewer_shards_than_readers(shard_dir, device):
    with pytest.raises(ValueError, match=r"4 shards cannot feed 3 workers x 2 ranks = 6 readers.*--min-shards 6"):
        make_loader(shard_dir, "train", config(workers=3), device, rank=1, world_size=2)


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
        idents = [[source_window(c, 16)[0] for c in b.mul(255).round().byte().cpu().numpy()] for b in batches[group : group + 3]]
        assert idents[0] == idents[1] == idents[2] and len(set(idents[0])) == 8


@dali
def test_backends_yield_the_same_kind_of_batch(shard_dir, device):
    torch_batch = next(make_loader(shard_dir, "train", config(), device))
    dali_batch = next(make_loader(shard_dir, "train", config(backend="dali"), device))
    assert (dali_batch.shape, dali_batch.dtype, dali_batch.device) == (torch_batch.shape, torch_batch.dtype, torch_batch.device)


@dali
def test_dali_refuses_unshuffled_shards_with_small_buffer(tmp_path, device):
    folder = write_shards(tmp_path / "plain", count=12, num_shards=2, shuffled=False)
    with pytest.raises(ValueError, match=r"not pre-shuffled.*shuffle_buffer=4 < 6 samples.*shuffle_buffer to 6"):
        make_loader(folder, "train", config(backend="dali", shuffle_buffer=4), device)
    assert next(make_loader(folder, "train", config(backend="dali", shuffle_buffer=6), device)).shape == (8, 3, 16, 16)
    assert read_manifest(folder)["shuffled"] is False


def test_dali_wrapper_asserts_fixed_batch_shape():
    cfg = config(batch_size=4, crops_per_image=2)
    wrong = iter([[{"patches": torch.zeros(4, 2, 3, 16, 15, dtype=torch.uint8)}]])
    with pytest.raises(RuntimeError, match=r"shape \(4, 2, 3, 16, 15\), expected \(4, 2, 3, 16, 16\)"):
        next(dali_to_device(wrong, cfg, torch.device("cpu")))
