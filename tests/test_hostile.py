"""Hostile inputs, made here: every photo format users have plus broken, misnamed and hostile files, run through
infer (the CLI), shards.pack + verify, evaluate (images and model files) and the demo's upload handler. Each case
asserts its outcome: restored at the right size (EXIF rotation applied), or a clear reason with nothing else lost."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_image
from PIL import Image

from demo.core import DemoError, read_upload
from evaluate.cli import load_images, load_model_arg
from infer.cli import main as infer_main
from infer.files import collect_inputs
from model import create_model
from pipeline.codecs import heif_available, missing_codecs
from pipeline.io import ImageError, open_image
from shards.pack import main as pack_main
from shards.pack import pack
from shards.verify import verify

REPO = Path(__file__).resolve().parents[1]
W, H = 40, 24  # the size of every ordinary sample (EXIF orientation 6 turns it into H x W)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_raw(width: int, height: int, bit_depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about a size)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def rgb16_png(width: int, height: int) -> bytes:
    values = np.random.default_rng(0).integers(0, 65536, (height, width * 3), dtype=np.uint16).astype(">u2")
    return png_raw(width, height, 16, 2, b"".join(b"\x00" + row.tobytes() for row in values))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def readable_files() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (file bytes, (width, height) the restored PNG must have)."""
    rgb = Image.fromarray(natural_image(H, W, seed=1))
    gray16 = Image.fromarray((np.arange(H * W, dtype=np.uint16).reshape(H, W) * 53).astype(np.uint16))
    rotated = Image.Exif()
    rotated[0x0112] = 6  # "rotate 90 CW to display"
    frames = [Image.new("RGB", (W, H), (60 * i, 90, 200 - 60 * i)) for i in range(3)]
    files = {
        "baseline.jpg": encoded(rgb, "JPEG", quality=90),
        "progressive.jpg": encoded(rgb, "JPEG", quality=90, progressive=True),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG", quality=90),
        "exif_rotated.jpg": encoded(rgb, "JPEG", quality=90, exif=rotated.tobytes()),
        "palette.png": encoded(rgb.quantize(16), "PNG"),
        "alpha.png": encoded(rgb.convert("RGBA"), "PNG"),
        "gray16.png": encoded(gray16, "PNG"),
        "rgb16.png": rgb16_png(W, H),
        "lzw.tif": encoded(rgb, "TIFF", compression="tiff_lzw"),
        "deflate.tiff": encoded(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "gray16_lzw.tif": encoded(gray16, "TIFF", compression="tiff_lzw"),
        "photo.webp": encoded(rgb, "WEBP", quality=90),
        "photo.avif": encoded(rgb, "AVIF", quality=90),
        "photo.bmp": encoded(rgb, "BMP"),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "фото é.png": encoded(rgb, "PNG"),
        "one_pixel.png": encoded(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "wide.png": encoded(Image.fromarray(natural_image(8, 20000, seed=2)), "PNG"),
    }
    sizes = {name: (W, H) for name in files}
    sizes.update({"exif_rotated.jpg": (H, W), "one_pixel.png": (1, 1), "wide.png": (20000, 8)})
    if heif_available():
        import pillow_heif

        pillow_heif.register_heif_opener()
        files["photo.heic"] = encoded(rgb, "HEIF", quality=90)
        sizes["photo.heic"] = (W, H)
    return {name: (data, sizes[name]) for name, data in files.items()}


# name -> the words infer's reason must contain (and the ImageError reason behind it, where there is one)
BROKEN = {
    "corrupt.png": ("damaged image file", "corrupt"),
    "truncated.jpg": ("truncated image file", "truncated"),
    "zero.jpg": ("empty file (zero bytes)", "empty"),
    "bomb.png": ("too large", "too_large"),
    "notes.jpg": ("not an image that can be read", "unreadable"),
    "loop.png": ("a symlink loop", None),
    "dangling.png": ("a dangling symlink", None),
}


def write_zoo(folder: Path) -> dict[str, tuple[int, int]]:
    """Every readable format, every broken case, a folder and a text file named like images, a symlink loop, a
    dangling symlink and a plain non-image file; returns readable name -> expected output size."""
    folder.mkdir(parents=True)
    readable = readable_files()
    for name, (data, _) in readable.items():
        (folder / name).write_bytes(data)
    png = readable["palette.png"][0]
    damaged = bytearray(png)
    damaged[len(png) // 2 : len(png) // 2 + 16] = bytes(16)  # inside IDAT: its CRC no longer matches
    (folder / "corrupt.png").write_bytes(bytes(damaged))
    jpeg = readable["baseline.jpg"][0]
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "bomb.png").write_bytes(png_raw(30000, 30000, 8, 2, b"\x00" * 16))  # 900 MP claimed, 16 bytes held
    (folder / "notes.jpg").write_text("a text file named like an image\n")
    (folder / "folder.png").mkdir()  # a folder named like an image: searched, holds nothing
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "dangling.png").symlink_to("nowhere.png")
    (folder / "readme.txt").write_text("not an image by name\n")
    return {name: size for name, (_, size) in readable.items()}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    folder = tmp_path_factory.mktemp("hostile") / "zoo"
    return folder, write_zoo(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny ResNet (its zero tail makes it the identity): fast on 20000x8."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    model = create_model("resnet", width=8, num_blocks=2)
    torch.save(
        {"model": model.state_dict(), "model_name": "resnet", "model_kwargs": {"width": 8, "num_blocks": 2}}, path
    )
    return path


def test_this_pillow_reads_every_format():
    assert missing_codecs() == []


def test_infer_restores_every_readable_file_and_names_each_broken_one(zoo, checkpoint, tmp_path):
    folder, sizes = zoo
    out = tmp_path / "out"
    command = [sys.executable, "-m", "infer", str(folder), "--out", str(out), "--model", str(checkpoint)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # non-zero only because of the broken files
    stems = Counter(Path(name).stem for name in sizes)  # photo.webp, photo.avif...: each keeps its suffix
    for name, size in sizes.items():
        shared = stems[Path(name).stem] > 1 and Path(name).suffix != ".png"
        written = out / (f"{name}.png" if shared else Path(name).with_suffix(".png"))
        assert written.is_file(), f"{name} was not restored:\n{done.stderr}"
        with Image.open(written) as img:
            assert img.size == size and img.mode == "RGB", name
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    for name, (words, _) in BROKEN.items():
        lines = [line for line in failed if f"{name}:" in line]
        assert len(lines) == 1 and words in lines[0], f"{name}: {lines}\n{done.stderr}"
    assert len(failed) == len(BROKEN), failed  # nothing else failed, nothing is reported twice
    assert f"{len(sizes)} written" in done.stdout
    assert "animated (3 frames): only the first frame is used" in done.stderr
    assert "16 bits per channel: reduced to 8 bits" in done.stderr
    assert not list(out.rglob("*.partial"))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_broken_file_raises_its_reason(zoo, name):
    folder, _ = zoo
    words, reason = BROKEN[name]
    if reason is None:  # symlinks that lead nowhere fail when the file is opened
        with pytest.raises(OSError):
            open_image(folder / name)
        return
    with pytest.raises(ImageError) as caught:
        open_image(folder / name)
    assert caught.value.reason == reason


def test_a_folder_named_like_an_image_is_not_a_file(zoo):
    folder, _ = zoo
    with pytest.raises(ImageError, match="is a folder") as caught:
        open_image(folder / "folder.png")
    assert caught.value.reason == "not_a_file"


def test_pack_keeps_every_readable_file_and_lists_every_skip(zoo, tmp_path):
    folder, sizes = zoo
    manifest = pack(folder, tmp_path / "shards", val_fraction=0, min_shards=1, min_side=1)
    assert manifest["splits"]["train"]["samples"] == len(sizes)
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == set(BROKEN), skipped
    for name, (_, reason) in BROKEN.items():
        assert skipped[name] == (reason or "unreadable_entry"), name
    assert manifest["ignored"] == ["readme.txt"]
    assert verify(tmp_path / "shards") == []
    stored = {}
    for entry in manifest["shards"]:
        index = (tmp_path / "shards" / entry["index"]).read_text().splitlines()[1:]
        with open(tmp_path / "shards" / entry["name"], "rb") as tar:
            data = tar.read()
        for line in index:
            fields = line.split()
            meta = next(fields[i + 1 : i + 3] for i in range(0, len(fields), 4) if fields[i] == "json")
            meta = json.loads(data[int(meta[0]) : int(meta[0]) + int(meta[1])])
            stored[meta["source"]] = (meta["width"], meta["height"])
    assert stored == sizes


def test_pack_refuses_an_empty_folder_and_verify_an_empty_pack(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files to pack"):
        pack(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(SystemExit) as caught:  # the command line: exit status 1 and the message, no traceback
        pack_main([str(tmp_path / "empty"), str(tmp_path / "out")])
    assert "no image files to pack" in str(caught.value.code) and "the folder is empty" in str(caught.value.code)
    assert not (tmp_path / "out").exists()
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"shards": [], "splits": {}}))
    assert any("no shards" in problem for problem in verify(tmp_path / "fake"))


def test_evaluate_keeps_going_past_unreadable_images(zoo):
    folder, sizes = zoo
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif", ".tiff", ".webp"))
    kept, images, problems = load_images(paths)
    listed = [name for name in sizes if Path(name).suffix in {p.suffix for p in paths}]
    tiny = {"one_pixel.png", "wide.png"}  # under SSIM's 11x11 window: named and left out, like unreadable files
    assert [p.name for p in kept] == sorted(set(listed) - tiny)
    for path, image in zip(kept, images, strict=True):
        assert image.shape == (sizes[path.name][1], sizes[path.name][0], 3) and image.dtype == np.uint8
    named = {line.split(": ", 1)[0] for line in problems}
    left_out = [name for name in (*BROKEN, "folder.png") if Path(name).suffix in (".png", ".jpg")] + sorted(tiny)
    assert named == {str(folder / name) for name in left_out}


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    data = good.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "zero.pt").write_bytes(b"")
    model = create_model("resnet", width=8, num_blocks=2)
    torch.save({"model": model.state_dict(), "model_name": "resnet", "model_kwargs": {"width": 16}}, folder / "arch.pt")
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    kwargs = {"width": 8, "num_blocks": 2}
    torch.save({"model": nan, "model_name": "resnet", "model_kwargs": kwargs}, folder / "nan.pt")
    torch.save({"model": RunsCode(folder / "ran")}, folder / "code.pt")
    return {
        "truncated": (folder / "truncated.pt", "truncated or damaged"),
        "zero": (folder / "zero.pt", "empty (zero bytes)"),
        "arch": (folder / "arch.pt", "do not fit the model"),
        "nan": (folder / "nan.pt", "NaN or inf"),
        "code": (folder / "code.pt", "refusing to unpickle"),
    }


class RunsCode:
    """Unpickling this runs `touch MARKER`: a checkpoint that executes code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_evaluate_refuses_each_bad_model_file_with_its_reason(checkpoint, tmp_path):
    for kind, (path, words) in _bad_checkpoints(tmp_path, checkpoint).items():
        with pytest.raises(SystemExit) as caught:
            load_model_arg(str(path))
        assert words in str(caught.value.code), kind
        assert "Traceback" not in str(caught.value.code)
    assert not (tmp_path / "ran").exists(), "unpickling the checkpoint ran its code"
    assert load_model_arg(str(checkpoint)) is not None


def test_infer_refuses_each_bad_model_file_with_its_reason(checkpoint, zoo, tmp_path, capsys):
    folder, _ = zoo
    for kind, (path, words) in _bad_checkpoints(tmp_path, checkpoint).items():
        status = infer_main([str(folder / "baseline.jpg"), "--out", str(tmp_path / "out"), "--model", str(path)])
        err = capsys.readouterr().err
        if kind == "nan":  # opens, then every output fails its check: named per file, the run exits 1
            assert status == 1 and "NaN" in err, err
            continue
        assert status == 2 and "error:" in err, (kind, err)
        assert words in err and len(err.strip().splitlines()) == 1, (kind, err)
    assert not (tmp_path / "ran").exists(), "unpickling the checkpoint ran its code"
    assert not (tmp_path / "out" / "baseline.png").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder: an unlistable folder cannot be made")
def test_an_unlistable_subfolder_is_named(tmp_path):
    (tmp_path / "in" / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "locked" / "a.png")
    (tmp_path / "in" / "locked").chmod(0)
    try:
        _, failures = collect_inputs([str(tmp_path / "in")])
        manifest_error = None
        try:
            pack(tmp_path / "in", tmp_path / "out")
        except ValueError as err:
            manifest_error = str(err)
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert any("locked: cannot list this folder" in line for line in failures), failures
    assert manifest_error is not None and "cannot list this folder" in manifest_error


def test_the_demo_upload_handler_reads_or_explains_each_file(zoo):
    folder, sizes = zoo
    for name, (width, height) in sizes.items():
        upload = read_upload(folder / name)
        assert upload.rgb8.shape == (height, width, 3), name
    assert any("only the first frame" in note for note in read_upload(folder / "animated.gif").notes)
    for name in BROKEN:
        with pytest.raises(DemoError, match=name):
            read_upload(folder / name)


@pytest.mark.skipif(not heif_available(), reason="pillow-heif (the heic extra) is not installed")
def test_without_its_plugin_heic_is_named_as_missing_support_not_damage(zoo, tmp_path):
    """A real Pillow without the HEIF plugin (pillow-heif hidden from the import system)."""
    folder, _ = zoo
    code = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from pipeline.io import ImageError, open_image\n"
        f"try:\n    open_image({str(folder / 'photo.heic')!r})\n"
        "except ImageError as err:\n    print(err.reason, '|', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("codec_missing |") and "pip install pillow-heif" in done.stdout, done.stderr
