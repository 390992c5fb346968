"""shards.unpack: a split back out as files at its source paths, byte for byte; hostile metadata and damaged or
clashing output refused before anything is written."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image

from pipeline.io import decode_rgb8
from pipeline.shard_format import read_manifest, split_shards
from shards.pack import pack
from shards.unpack import main, target_path, unpack


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """Two collections (JPEGs and PNGs) packed together, a third of each held out."""
    root = tmp_path_factory.mktemp("unpack")
    for i in range(12):
        collection = root / "src" / ("photos" if i % 2 else "scans")
        collection.mkdir(parents=True, exist_ok=True)
        fmt = "JPEG" if i % 3 else "PNG"
        Image.fromarray(natural_image(70 + i, 90, seed=i)).save(collection / f"im{i:02d}.{fmt.lower()}", format=fmt)
    pack([root / "src" / "photos", root / "src" / "scans"], root / "shards", val_fraction=0.34, seed=1)
    return root / "src", root / "shards"


def test_a_split_comes_back_at_its_source_paths_byte_for_byte(packed, tmp_path, capsys):
    src, shards = packed
    main([str(shards), str(tmp_path / "out")])
    written = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(written) == read_manifest(shards)["splits"]["val"]["samples"]
    assert {p.parts[0] for p in written} == {"photos", "scans"}, "each collection gets a folder"
    assert {p.suffix for p in written} == {".jpg", ".png"}, "stored JPEGs and PNGs both held out"
    for rel in written:
        data = (tmp_path / "out" / rel).read_bytes()
        source = next((src / rel.parent).glob(f"{rel.stem}.*"))
        if rel.suffix == ".jpg":
            assert data == source.read_bytes(), "a stored JPEG is written as it was"
        else:
            np.testing.assert_array_equal(decode_rgb8(data), np.asarray(Image.open(source).convert("RGB")))
    assert f"{len(written)} images written" in capsys.readouterr().out


def test_an_existing_file_is_never_replaced_and_nothing_is_written(packed, tmp_path):
    out = tmp_path / "out"
    first = unpack(packed[1], out)
    first[-1].write_bytes(b"mine")
    for path in first[:-1]:
        path.unlink()
    with pytest.raises(FileExistsError, match="unpack into an empty folder"):
        unpack(packed[1], out)
    assert first[-1].read_bytes() == b"mine"
    assert not any(path.exists() for path in first[:-1]), "refused before the first write"


@pytest.mark.parametrize("source", ["../escape.jpg", "/etc/escape.jpg", "a/../../b.jpg", "a\\..\\b.jpg", "", 3])
def test_metadata_paths_that_leave_the_folder_are_refused(tmp_path, source):
    with pytest.raises(ValueError, match="outside the output folder|is not a path"):
        target_path(tmp_path, source, "jpg")


def rewrite_first_val_shard(shards: Path, source: str) -> None:
    """Give the first sample of the first val shard another metadata source (a hostile shard)."""
    shard = split_shards(shards, "val")[0]
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive if m.isreg()]
    name, data = next((m.name, d) for m, d in members if m.name.endswith(".json"))
    meta = json.loads(data)
    meta["source"] = source
    with tarfile.open(shard, "w") as archive:
        for member, payload in members:
            payload = json.dumps(meta).encode() if member.name == name else payload
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))


@pytest.mark.parametrize("damage", ["hostile", "truncated"])
def test_hostile_or_damaged_shards_write_nothing(packed, tmp_path, damage):
    shards = shutil.copytree(packed[1], tmp_path / "shards")
    if damage == "hostile":
        rewrite_first_val_shard(shards, "../../escape.jpeg")
        expected = "outside the output folder"
    else:
        last = split_shards(shards, "val")[-1]
        last.write_bytes(last.read_bytes()[:700])
        expected = "not a readable tar|lacks its image"
    with pytest.raises(ValueError, match=expected):
        unpack(shards, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.jpeg").exists()
