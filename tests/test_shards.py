"""shards/: pack + verify round trip, every awkward input, DALI index parity, synth statistics, resumable fetch."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image

from pipeline.io import decode_rgb8
from pipeline.shard_format import dali_index, read_manifest, split_shards
from shards.pack import pack
from shards.synth import render, synth
from shards.verify import verify


def write_tree(root: Path, count: int = 14) -> dict[str, np.ndarray]:
    """Plain JPEGs and RGB PNGs in nested folders (plus one non-image file); returns relative path -> pixels."""
    images = {}
    for i in range(count):
        rel = f"{'a' if i % 2 else 'b/c'}/img{i:02d}.{'JPG' if i % 3 else 'png'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        images[rel] = natural_image(64 + i, 80 + 2 * i, seed=i)
        Image.fromarray(images[rel]).save(root / rel, format="JPEG" if i % 3 else "PNG", quality=90)
    (root / "a" / "notes.txt").write_text("not an image")
    return images


def read_shards(folder: Path) -> dict[str, tuple[dict, bytes]]:
    """source path -> (metadata, stored image bytes), over every shard of a folder."""
    samples = {}
    for entry in read_manifest(folder)["shards"]:
        with tarfile.open(folder / entry["name"]) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive if m.isreg()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                image = next(v for k, v in members.items() if k.startswith(meta["key"]) and not k.endswith(".json"))
                assert meta["source"] not in samples, f"{meta['source']} packed twice"
                samples[meta["source"]] = (meta, image)
    return samples


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("pack")
    images = write_tree(root / "src")
    pack(root / "src", root / "out", val_fraction=0.2, seed=3, min_shards=3)
    return root / "src", root / "out", images


def test_round_trip(packed):
    src, out, images = packed
    manifest = read_manifest(out)
    assert verify(out) == []
    assert manifest["shuffled"] is True and manifest["seed"] == 3 and manifest["ignored_files"] == 1
    assert manifest["splits"]["val"]["samples"] == 3 and manifest["splits"]["train"]["samples"] == 11
    assert manifest["splits"]["train"]["shards"] == 3 and manifest["splits"]["val"]["shards"] == 3
    assert manifest["image_format"]["counts"] == {"jpg": 9, "png": 5}
    assert [path.name for path in split_shards(out, "val")] == ["val-00000.tar", "val-00001.tar", "val-00002.tar"]
    samples = read_shards(out)
    assert sorted(samples) == sorted(images), "every source exactly once across train and val"
    for rel, (meta, data) in samples.items():
        assert {"source", "width", "height", "mode", "conversion", "stored", "split"} <= set(meta)
        if meta["stored"] == "source_jpeg":
            assert data == (src / rel).read_bytes(), "plain JPEGs are stored untouched"
        else:
            np.testing.assert_array_equal(decode_rgb8(data), images[rel])
    keys = sorted(meta["key"] for meta, _ in samples.values())
    assert keys == [f"{i:07d}" for i in range(14)]


def test_deterministic_and_seeded(packed, tmp_path):
    src, out, _ = packed
    pack(src, tmp_path / "again", val_fraction=0.2, seed=3, min_shards=3, workers=2)
    for path in sorted(out.glob("*-*.*")):
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    pack(src, tmp_path / "other", val_fraction=0.2, seed=4, min_shards=3)
    val = {rel for rel, (meta, _) in read_shards(out).items() if meta["split"] == "val"}
    other = {rel for rel, (meta, _) in read_shards(tmp_path / "other").items() if meta["split"] == "val"}
    assert val != other


def test_shard_size_limit(packed, tmp_path):
    src, _, _ = packed
    manifest = pack(src, tmp_path / "small", val_fraction=0.0, min_shards=1, max_shard_mb=0.05)
    assert len(manifest["shards"]) > 2
    assert all(entry["bytes"] <= 0.05 * 2**20 for entry in manifest["shards"])
    assert verify(tmp_path / "small") == []


DAMAGE = {"flip_byte": "sha256", "delete_shard": "missing", "wrong_index": "does not match", "stray_tar": "not listed"}


@pytest.mark.parametrize(("damage", "expected"), DAMAGE.items())
def test_verify_finds_damage(packed, tmp_path, damage, expected):
    folder = shutil.copytree(packed[1], tmp_path / "copy")
    shard = folder / read_manifest(folder)["shards"][0]["name"]
    if damage == "flip_byte":
        data = bytearray(shard.read_bytes())
        data[2000] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "delete_shard":
        shard.unlink()
    elif damage == "wrong_index":
        index = shard.with_suffix(".idx")
        index.write_text(index.read_text().replace(" 512 ", " 1024 ", 1))
    else:
        shutil.copyfile(shard, folder / "train-00099.tar")
    problems = verify(folder)
    assert any(expected in problem for problem in problems), problems


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header() -> bytes:
    """A PNG claiming 4000x4000 pixels (over the test's max_pixels); only its header is valid: decoding would fail."""
    data = bytearray(png_bytes(Image.new("RGB", (8, 8))))
    data[16:24] = (4000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def awkward_inputs(folder: Path) -> dict[str, np.ndarray]:
    """Write every awkward input; returns the expected packed pixels of the ones that must be kept."""
    rgb = natural_image(72, 96, seed=7)
    gray = rgb[..., 1]
    alpha = np.where(np.arange(96)[None, :] < 48, 255, 0).astype(np.uint8).repeat(72, 0)
    over_white = np.rint(rgb * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255)).astype(np.uint8)
    wide = (gray.astype(np.uint16) * 257 + 100).astype(np.uint16)
    palette = Image.fromarray(rgb).quantize(16)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    palette.save(folder / "palette.png")
    palette.save(folder / "palette_alpha.png", transparency=0)
    Image.fromarray(wide).save(folder / "gray16.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
    Image.fromarray(np.dstack([gray, alpha])).save(folder / "la.png")
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(gray > 128).save(folder / "bits.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer must rotate the stored pixels 90 degrees clockwise
    Image.fromarray(np.rot90(rgb).copy()).save(folder / "rotated.jpg", quality=98, exif=exif)
    Image.fromarray(rgb[:40, :40]).save(folder / "tiny.png")
    (folder / "huge.png").write_bytes(huge_png_header())
    (folder / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[:1500])
    (folder / "garbage.png").write_bytes(bytes(range(256)) * 8)
    (folder / "text.jpg").write_text("this is a text file with an image name\n" * 20)
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    palette_rgb = np.asarray(palette.convert("RGB"))
    palette_alpha = np.where((np.asarray(palette) == 0)[..., None], 255, palette_rgb).astype(np.uint8)
    return {
        "cmyk.jpg": np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB")),
        "palette.png": palette_rgb,
        "palette_alpha.png": palette_alpha,
        "gray16.png": np.repeat(np.rint(wide / 257).astype(np.uint8)[..., None], 3, axis=2),
        "rgba.png": over_white,
        "la.png": np.repeat(np.where(alpha > 0, gray, 255)[..., None], 3, axis=2),
        "gray.png": gray3,
        "bits.png": np.where(gray3 > 128, 255, 0).astype(np.uint8),
        "rotated.jpg": rgb,
        "rotated_stored": np.asarray(Image.open(folder / "rotated.jpg")),  # decoded pixels, EXIF not applied
    }


SKIPS = {"tiny.png": "too_small", "huge.png": "too_large", "empty.jpg": "empty", "truncated.jpg": "truncated"}
SKIPS |= {"garbage.png": "unreadable", "text.jpg": "unreadable"}  # corrupt bytes / a text file, with image names


@pytest.fixture(scope="module")
def awkward(tmp_path_factory) -> tuple[dict, dict, dict]:
    root = tmp_path_factory.mktemp("awkward")
    (root / "src").mkdir()
    expected = awkward_inputs(root / "src")
    manifest = pack(root / "src", root / "out", val_fraction=0.0, min_shards=2, max_pixels=10_000_000)
    assert verify(root / "out") == []
    return expected, read_shards(root / "out"), manifest


KEPT = ["cmyk.jpg", "palette.png", "palette_alpha.png", "gray16.png", "rgba.png", "la.png", "gray.png", "bits.png"]


@pytest.mark.parametrize("name", KEPT)
def test_awkward_input_normalised(awkward, name):
    expected, samples, _ = awkward
    meta, data = samples[name]
    assert meta["stored"] == "png" and meta["conversion"], meta
    np.testing.assert_array_equal(decode_rgb8(data), expected[name])


def test_exif_rotation_applied(awkward):
    expected, samples, _ = awkward
    meta, data = samples["rotated.jpg"]
    upright = decode_rgb8(data).astype(np.float64)
    assert upright.shape == expected["rotated.jpg"].shape and "exif_orientation_6" in meta["conversion"]
    np.testing.assert_array_equal(upright, np.rot90(expected["rotated_stored"], k=-1))  # turned clockwise, exactly
    targets = (expected["rotated.jpg"], np.rot90(expected["rotated.jpg"], 2))
    intended, upside_down = (np.abs(upright - target).mean() for target in targets)
    assert intended < 10 < upside_down, (intended, upside_down)  # upright up to JPEG loss of the noisy texture


@pytest.mark.parametrize(("name", "reason"), sorted(SKIPS.items()))
def test_bad_input_skipped(awkward, name, reason):
    _, samples, manifest = awkward
    assert name not in samples
    assert {entry["path"]: entry["reason"] for entry in manifest["skipped"]}[name] == reason


@pytest.mark.dali
def test_dali_index_and_reader(packed):
    wds2idx = pytest.importorskip("wds2idx", reason="DALI's wds2idx is not installed")
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    from nvidia.dali import fn, pipeline_def, types

    out = packed[1]
    tars = sorted(out.glob("*.tar"))
    for tar in tars:
        reference = tar.with_suffix(".ref")
        with wds2idx.IndexCreator(str(tar), str(reference), verbose=False) as creator:
            creator.create_index()
        assert dali_index(tar) == reference.read_text() == tar.with_suffix(".idx").read_text()
        reference.unlink()

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read_all():
        indexes = [str(tar.with_suffix(".idx")) for tar in tars]
        image, meta = fn.readers.webdataset(
            paths=[str(tar) for tar in tars],
            index_paths=indexes,
            ext=["jpg;png", "json"],
            missing_component_behavior="error",
        )
        return fn.decoders.image(image, device="cpu", output_type=types.RGB), meta

    pipe = read_all()
    pipe.build()
    sources = set()
    for _ in range(14):
        image, meta = pipe.run()
        meta = json.loads(bytes(np.asarray(meta[0])))
        assert np.asarray(image[0]).shape == (meta["height"], meta["width"], 3)
        sources.add(meta["source"])
    assert sources == set(packed[2])


def test_synth_deterministic_and_natural(tmp_path):
    first, again, other = render(1, 128), render(1, 128), render(2, 128)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 10
    luminance = first.astype(np.float64).mean(axis=2)
    assert np.abs(np.diff(luminance, axis=1)).mean() > 2, "leaves give edges and texture"
    power = np.abs(np.fft.fftshift(np.fft.fft2(luminance - luminance.mean()))) ** 2
    radius = np.hypot(*np.mgrid[-64:64, -64:64])
    low, mid, high = (power[(radius >= a) & (radius < b)].mean() for a, b in ((2, 6), (10, 20), (40, 60)))
    assert low > mid > high and low > 30 * high, "power falls with frequency, as in natural images"
    manifest = synth(tmp_path / "synth", 6, size=64, seed=5, val_fraction=0.0, min_shards=2)
    assert manifest["splits"]["train"]["samples"] == 6 and verify(tmp_path / "synth") == []


def test_several_sources_keep_each_held_out_split_and_downscale_on_request(packed, tmp_path):
    """A source's held-out images are the ones it has when packed alone; the second source is box-downscaled."""
    src, out, images = packed
    other = tmp_path / "other"
    other.mkdir()
    for i in range(6):
        Image.fromarray(natural_image(130 + i, 150, seed=50 + i)).save(other / f"o{i}.png")
    both = tmp_path / "both"
    pack([src, other], both, val_fraction=0.2, seed=3, min_shards=3, downscale=[1, 2], min_side=32)
    alone = read_shards(out)
    mixed = read_shards(both)
    held_out = {s for s, (meta, _) in alone.items() if meta["split"] == "val"}
    assert {s for s, (meta, _) in mixed.items() if meta["split"] == "val" and s.startswith("src/")} == {
        f"src/{s}" for s in held_out
    }
    meta, data = mixed["other/o0.png"]
    stored = decode_rgb8(data)
    assert stored.shape == (65, 75, 3) and "box_downscale_2" in meta["conversion"]
    expected = natural_image(130, 150, seed=50).reshape(65, 2, 75, 2, 3).mean(axis=(1, 3))
    assert np.abs(stored.astype(float) - expected).max() <= 1  # Pillow's reduce: the 2 x 2 box mean, rounded


def test_a_refused_repack_leaves_the_previous_shards_as_they_were(packed, tmp_path):
    src, out, _ = packed
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_text("hi")
    with pytest.raises(ValueError, match="none of its 2 image files"):
        pack(bad, copy)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "shards"]  # no staging folder left behind
    pack(src, copy, val_fraction=0.2, seed=3, min_shards=3)  # a good re-pack replaces it
    assert read_manifest(copy)["splits"] == read_manifest(out)["splits"]
