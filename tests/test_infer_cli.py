"""The `python -m infer` command line: files, folders, globs, structure under --out, skip-existing, atomic writes,
ICC/EXIF, batching, bad inputs, odd modes, strength and tile options; and `python -m infer.degrade`."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAKE_RGB_ICC, ROOT, natural_image, run_cli, save_checkpoint, tiny_nafnet, write_image
from PIL import Image

from infer.backends import open_backend
from infer.degrade import main as degrade_main
from infer.tiling import restore
from model import SHIPPED_MODEL
from model.condition import encode_condition
from pipeline.io import load_rgb8, to_tensor
from pipeline.reference import degrade_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_output(path: Path | None, source: Path, condition: torch.Tensor | None = None) -> np.ndarray:
    """What the model makes of `source` (None: the shipped model as `open_backend` picks it), computed here
    without the CLI: (H, W, 3) uint8."""
    from pipeline.io import to_rgb8_array

    return to_rgb8_array(open_backend(path, device="cpu")(to_tensor(load_rgb8(source))[None], condition)[0])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)


def test_folders_globs_and_structure_under_out(tmp_path, blind_ckpt):
    src, glob_dir, out = tmp_path / "src", tmp_path / "g", tmp_path / "out"
    write_image(src / "a" / "b" / "one.png", natural_image(20, 24, 0))
    write_image(src / "a" / "two.JPG", natural_image(18, 22, 1), format="JPEG")
    (src / "a" / "notes.txt").write_text("not an image, not picked up from a folder")
    write_image(glob_dir / "x1.png", natural_image(16, 16, 2))
    write_image(glob_dir / "deep" / "x2.png", natural_image(17, 15, 3))
    write_image(glob_dir / "skip.bmp", natural_image(16, 16, 4))
    single = write_image(tmp_path / "single.tif", natural_image(21, 19, 5))
    code = run_cli(src, glob_dir / "*.png", glob_dir / "**" / "x2.png", single, "--out", out, "--model", blind_ckpt)
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a/b/one.png", "a/two.png", "deep/x2.png", "single.png", "x1.png"]
    assert np.array_equal(read_png(out / "a" / "two.png"), model_output(blind_ckpt, src / "a" / "two.JPG"))
    assert np.array_equal(read_png(out / "deep" / "x2.png"), model_output(blind_ckpt, glob_dir / "deep" / "x2.png"))


def test_skip_existing_restarts_a_job(tmp_path, blind_ckpt, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        write_image(src / f"im{i}.png", natural_image(16, 20, i))
    assert run_cli(src, "--out", out, "--model", blind_ckpt) == 0
    sentinel = natural_image(5, 5, 9)
    write_image(out / "im0.png", sentinel)  # a finished output from "an earlier run"
    (out / "im1.png").unlink()  # an output the interrupted job never wrote
    capsys.readouterr()
    assert run_cli(src, "--out", out, "--model", blind_ckpt, "--skip-existing") == 0
    assert "1 written, 2 skipped" in capsys.readouterr().out
    assert np.array_equal(read_png(out / "im0.png"), sentinel)
    assert np.array_equal(read_png(out / "im1.png"), model_output(blind_ckpt, src / "im1.png"))
    assert run_cli(src, "--out", out, "--model", blind_ckpt) == 0  # without the flag: everything rewritten
    assert np.array_equal(read_png(out / "im0.png"), model_output(blind_ckpt, src / "im0.png"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]


def test_a_killed_write_leaves_no_png_under_the_final_name(tmp_path):
    """SIGKILL while a large PNG is being written: only the hidden `.partial` file exists, so --skip-existing
    (which looks for the final name) redoes that image."""
    target = tmp_path / "out" / "big.png"
    script = (
        "import sys, numpy as np; from pathlib import Path; from infer.files import write_png; "
        "write_png(np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8), Path(sys.argv[1]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)], env=env)
    deadline = time.monotonic() + 90
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in target.parent.glob(".big.png.*.partial") if p.stat().st_size > 0]
        if partial:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial, "the writer finished before it could be interrupted"
    assert not target.exists()


def test_icc_profile_and_exif_are_kept_with_orientation_reset(tmp_path, blind_ckpt):
    src, out = tmp_path / "src", tmp_path / "out"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "TestMaker"
    exif.get_ifd(0x8769)[0x9003] = "2024:01:02 03:04:05"  # DateTimeOriginal, in the Exif sub-IFD
    stored = natural_image(20, 30, 2)  # (H, W) as stored; upright it is 30 high, 20 wide
    write_image(src / "photo.jpg", stored, format="JPEG", quality=95, exif=exif.tobytes(), icc_profile=FAKE_RGB_ICC)
    cmyk_icc = FAKE_RGB_ICC[:16] + b"CMYK" + FAKE_RGB_ICC[20:]
    Image.fromarray(stored).convert("CMYK").save(src / "cmyk.jpg", icc_profile=cmyk_icc)
    assert run_cli(src, "--out", out, "--model", blind_ckpt) == 0
    with Image.open(out / "photo.png") as img:
        assert img.size == (20, 30)
        assert img.info["icc_profile"] == FAKE_RGB_ICC
        fields = img.getexif()
        assert fields[0x0112] == 1 and fields[0x010F] == "TestMaker"
        assert fields.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    with Image.open(out / "cmyk.png") as img:
        assert img.mode == "RGB" and "icc_profile" not in img.info  # a CMYK profile does not describe RGB pixels


def test_batching_equal_sizes_gives_the_same_images(tmp_path, blind_ckpt):
    src = tmp_path / "src"
    for i, (h, w) in enumerate([(24, 32), (24, 32), (20, 20), (24, 32), (24, 32), (20, 20)]):
        write_image(src / f"im{i}.png", natural_image(h, w, i))
    assert run_cli(src, "--out", tmp_path / "one", "--model", blind_ckpt) == 0
    assert run_cli(src, "--out", tmp_path / "batched", "--model", blind_ckpt, "--batch", "3") == 0
    for i in range(6):
        one, batched = read_png(tmp_path / "one" / f"im{i}.png"), read_png(tmp_path / "batched" / f"im{i}.png")
        assert np.abs(one.astype(int) - batched).max() <= 1, i  # float reordering may move a value by one level
        assert (one != batched).mean() < 1e-3, i


def test_bad_inputs_fail_clearly_while_good_ones_are_written(tmp_path, blind_ckpt, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "good.png", natural_image(16, 16, 0))
    buffer = io.BytesIO()
    Image.fromarray(natural_image(64, 64, 1)).save(buffer, format="PNG")
    (src / "corrupt.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.png").write_text("hello, I am not a PNG")
    code = run_cli(src, tmp_path / "missing.png", tmp_path / "nothing-*.png", "--out", out, "--model", blind_ckpt)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    err = capsys.readouterr().err
    assert "empty.jpg: empty file (zero bytes)" in err
    assert "text.png: not an image that can be read" in err
    assert "corrupt.png: truncated image file" in err or "corrupt.png: damaged image file" in err
    assert "missing.png: no such file or directory" in err
    assert "nothing-*.png: no image files match this pattern" in err


def test_cmyk_16bit_rgba_and_gray_inputs(tmp_path, blind_ckpt):
    src, out = tmp_path / "src", tmp_path / "out"
    rgb = natural_image(16, 20, 3)
    Image.fromarray(rgb).convert("CMYK").save(src.mkdir() or src / "cmyk.jpg")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(src / "gray16.png")
    write_image(src / "rgba.png", np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]))
    write_image(src / "gray.png", rgb[..., 1])
    assert run_cli(src, "--out", out, "--model", blind_ckpt) == 0
    for name in ("cmyk.jpg", "gray16.png", "rgba.png", "gray.png"):
        restored = read_png(out / Path(name).with_suffix(".png"))
        assert restored.shape == (16, 20, 3)
        assert np.array_equal(restored, model_output(blind_ckpt, src / name)), name


def test_strength_options(tmp_path, blind_ckpt, capsys):
    image = write_image(tmp_path / "in.png", natural_image(24, 24, 6))
    assert run_cli(image, "--out", tmp_path / "o1", "--model", blind_ckpt, "--sigma", "25") == 2
    assert "blind" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    conditioned = save_checkpoint(tiny_nafnet(conditioned=True), tmp_path / "cond.pt", conditioned=True)
    assert run_cli(image, "--out", tmp_path / "o2", "--model", conditioned, "--sigma", "25", "--quality", "40") == 0
    assert run_cli(image, "--out", tmp_path / "o3", "--model", conditioned) == 0
    strong, blind = read_png(tmp_path / "o2" / "in.png"), read_png(tmp_path / "o3" / "in.png")
    assert np.array_equal(strong, model_output(conditioned, image, encode_condition(1, 25.0, 40.0)))
    assert not np.array_equal(strong, blind)
    assert run_cli(image, "--out", tmp_path / "o4", "--model", conditioned, "--quality", "0") == 2


def test_tile_option(tmp_path, blind_ckpt, capsys):
    from pipeline.io import to_rgb8_array

    image = write_image(tmp_path / "in.png", natural_image(60, 90, 1))
    assert run_cli(image, "--out", tmp_path / "o", "--model", blind_ckpt, "--tile", "8") == 2
    assert "too small" in capsys.readouterr().err
    assert run_cli(image, "--out", tmp_path / "o", "--model", blind_ckpt, "--tile", "48", "--overlap", "8") == 0
    err = capsys.readouterr().err
    assert "tile" in err and "MPix/s" in err  # the bar of the image's tiles
    tiled = restore(open_backend(blind_ckpt, device="cpu"), to_tensor(load_rgb8(image))[None], tile=48, overlap=8)
    assert np.array_equal(read_png(tmp_path / "o" / "in.png"), to_rgb8_array(tiled[0]))


def test_python_m_infer_uses_the_shipped_model(tmp_path):
    image = write_image(tmp_path / "photo.png", natural_image(40, 56, 8))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "infer", "photo.png", "--out", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert SHIPPED_MODEL.name in result.stdout and "shipped model" in result.stdout
    assert "runtime: " in result.stdout and "fastest" in result.stdout  # which runtime it chose, and why
    assert "1/1" in result.stderr  # the progress bar
    restored = read_png(tmp_path / "out" / "photo.png")
    assert np.array_equal(restored, model_output(None, image))
    eager = model_output(SHIPPED_MODEL, image)  # another runtime: the same up to float rounding
    assert np.abs(restored.astype(int) - eager).max() <= 1


# --- infer.degrade -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sigma", "quality", "suffix"), [(15, 40, ".png"), (15, 40, ".jpg"), (10, 0, ".png"), (0, 30, ".jpg")]
)
def test_degrade_matches_the_reference(tmp_path, sigma, quality, suffix):
    clean8 = natural_image(40, 56, 5)
    source = write_image(tmp_path / "clean.png", clean8)
    out = tmp_path / f"degraded{suffix}"
    assert (
        degrade_main([str(source), "--sigma", str(sigma), "--quality", str(quality), "--out", str(out), "--seed", "3"])
        == 0
    )
    params = {"sigma_255": sigma, "quality": quality, "subsampling": 2, "quality2": 0}
    expected = degrade_reference(clean8, params, np.random.default_rng(3))
    with Image.open(out) as img:
        assert img.format == ("JPEG" if suffix == ".jpg" else "PNG")
    assert np.array_equal(load_rgb8(out), expected)


def test_degrade_refuses_a_jpeg_without_jpeg(tmp_path, capsys):
    source = write_image(tmp_path / "clean.png", natural_image(16, 16, 0))
    assert degrade_main([str(source), "--sigma", "10", "--quality", "0", "--out", str(tmp_path / "x.jpg")]) == 1
    assert "needs --quality" in capsys.readouterr().err and not (tmp_path / "x.jpg").exists()
    assert degrade_main([str(source), "--sigma", "10", "--quality", "50", "--out", str(tmp_path / "x.webp")]) == 1


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_ensemble_runs_eight_passes_through_the_runtime(tmp_path, runtime, capsys):
    """--ensemble: the mean over the 8 flips and quarter turns, each pass through the chosen runtime, matches the
    eager self-ensemble; one pass differs from it."""
    from export.onnx import export_onnx
    from export.parity import load_source
    from model import load_model
    from model.testtime import SelfEnsemble
    from pipeline.io import to_rgb8_array

    if runtime == "openvino":
        pytest.importorskip("openvino")
    checkpoint = save_checkpoint(tiny_nafnet(conditioned=True), tmp_path / "c.pt", conditioned=True)
    model_file = checkpoint
    if runtime != "torch":
        model_file = tmp_path / "c.onnx"
        export_onnx(load_source(checkpoint), model_file, conditioned=True, pooled_io=True)
    image = write_image(tmp_path / "in.png", natural_image(29, 37, 5))
    condition = encode_condition(1, 25.0, 40.0)
    strength = ["--sigma", "25", "--quality", "40"]
    assert (
        run_cli(image, "--out", tmp_path / "o", "--model", model_file, "--runtime", runtime, *strength, "--ensemble")
        == 0
    )
    assert "ensemble: the 8 flips" in capsys.readouterr().out
    with torch.no_grad():
        expected = to_rgb8_array(SelfEnsemble(load_model(checkpoint))(to_tensor(load_rgb8(image))[None], condition)[0])
    restored = read_png(tmp_path / "o" / "in.png")
    assert np.abs(restored.astype(int) - expected.astype(int)).max() <= 1
    one_pass = model_output(checkpoint, image, condition)
    assert np.abs(one_pass.astype(int) - expected.astype(int)).max() > 1  # so a single pass would fail above
