"""The demo: its handlers on real files (restore, simulate, odd modes, bad files), and two users at once through
the real Gradio server and `gradio_client`. A tiny NAFNet checkpoint written here keeps it fast."""

from __future__ import annotations

import os
import re
import struct
import zlib

import gradio as gr
import numpy as np
import pytest
from conftest import assert_close8, bad_files, expected_restore, natural_image, save, write_tiny_checkpoint
from PIL import Image

from demo.app import STRENGTH_AUTO, STRENGTH_SET, build_app, model_summary
from demo.core import read_upload
from evaluate.metrics import psnr, ssim
from infer.backends import open_backend
from model import SHIPPED_MODEL
from model.condition import encode_condition
from pipeline.io import load_rgb8, to_rgb8_array, to_tensor
from pipeline.reference import degrade_reference


def png48(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def handlers(checkpoint, tmp_path_factory):
    app = build_app(open_backend(checkpoint, device="cpu"), workroot=tmp_path_factory.mktemp("work"))
    return app.handlers


def restore(handlers, paths, strength=STRENGTH_AUTO, sigma=15, quality=40, no_jpeg=False, previous=None):
    return handlers.restore(paths, strength, sigma, quality, no_jpeg, previous)


def test_restore_writes_pngs_equal_to_the_model(handlers, checkpoint, tmp_path):
    clean = [natural_image(37, 53, seed=1), natural_image(48, 40, seed=2)]
    paths = [save(clean[0], tmp_path / "a.png"), save(clean[1], tmp_path / "b.png")]
    paths.append(save(clean[1], (tmp_path / "again").mkdir() or tmp_path / "again" / "b.png"))  # a repeated name
    slider, downloads, pick, report, state = restore(handlers, paths)
    assert slider == (state["results"][0]["input"], state["results"][0]["restored"])
    assert [os.path.basename(p) for p in downloads] == ["a_restored.png", "b_restored.png", "b-2_restored.png"]
    for path, rgb8 in zip(downloads, [clean[0], clean[1], clean[1]], strict=True):
        with Image.open(path) as png:
            assert png.format == "PNG" and png.mode == "RGB"
        restored8 = load_rgb8(path)
        assert_close8(restored8, expected_restore(checkpoint, rgb8))
        assert np.abs(restored8.astype(int) - rgb8).mean() > 1  # the model changed it
    assert np.array_equal(load_rgb8(state["results"][1]["input"]), clean[1])
    assert pick.visible and pick.choices[1][0] == "2. b.png"
    assert "**a.png**: 53x37" in report and "skipped" not in report
    assert handlers.compare(1, state) == (state["results"][1]["input"], state["results"][1]["restored"])
    assert handlers.compare(7, state) is None
    (tmp_path / "bad.png").write_bytes(b"not an image")
    folders = set(handlers.workroot.iterdir())
    with pytest.raises(gr.Error):  # a failed run keeps the session's results and leaves no folder behind
        restore(handlers, [str(tmp_path / "bad.png")], previous=state)
    assert os.path.exists(state["results"][2]["restored"]) and set(handlers.workroot.iterdir()) == folders
    _, _, _, _, state2 = restore(handlers, paths[:1], previous=state)  # a new run removes the session's old files
    assert not os.path.exists(state["folder"]) and os.path.exists(state2["folder"])


def test_strength_is_ignored_by_a_blind_model_and_used_by_a_conditioned_one(handlers, tmp_path):
    rgb8 = natural_image(32, 32, seed=3)
    path = save(rgb8, tmp_path / "x.png")
    blind = restore(handlers, [path], STRENGTH_SET, sigma=40, quality=10)[1][0]
    assert np.array_equal(load_rgb8(blind), load_rgb8(restore(handlers, [path])[1][0]))
    checkpoint = write_tiny_checkpoint(tmp_path / "cond.pt", conditioned=True, seed=4)
    cond = build_app(open_backend(checkpoint, device="cpu"), workroot=tmp_path / "work").handlers
    auto = load_rgb8(restore(cond, [path])[1][0])
    assert_close8(auto, expected_restore(checkpoint, rgb8))
    for sigma, quality, no_jpeg, encoded_quality in [(40, 10, False, 10), (5, 90, True, 0)]:
        by_hand = load_rgb8(restore(cond, [path], STRENGTH_SET, sigma, quality, no_jpeg)[1][0])
        condition = encode_condition(1, sigma_255=sigma, quality=encoded_quality)
        assert_close8(by_hand, expected_restore(checkpoint, rgb8, condition))
        assert np.abs(by_hand.astype(int) - auto).max() > 2  # the strength reached the model


def test_simulate_degrades_with_libjpeg_and_measures_both(handlers, checkpoint, tmp_path):
    clean8 = natural_image(40, 48, seed=5)
    degraded8, restored8, shown_clean, table = handlers.simulate(save(clean8, tmp_path / "c.png"), 20, 25, False, 7, 0)
    params = {"sigma_255": 20.0, "quality": 25, "subsampling": 2, "quality2": 0, "shift_y": 0, "shift_x": 0}
    assert np.array_equal(degraded8, degrade_reference(clean8, params, np.random.default_rng(7)))
    assert_close8(restored8, expected_restore(checkpoint, degraded8))
    assert np.array_equal(shown_clean, clean8)
    clean = to_tensor(clean8).unsqueeze(0)
    for name, image8 in [("degraded", degraded8), ("restored", restored8)]:
        image = to_tensor(image8).unsqueeze(0)
        assert f"| {name} | {float(psnr(image, clean)[0]):.2f} | {float(ssim(image, clean)[0]):.4f} |" in table
    assert "sigma 20" in table and "JPEG quality 25 (4:2:0)" in table
    nothing = handlers.simulate(save(clean8, tmp_path / "d.png"), 0, 25, True, 0, 0)
    assert np.array_equal(nothing[0], clean8) and "| degraded | inf |" in nothing[3] and "no JPEG" in nothing[3]
    tiny = handlers.simulate(save(natural_image(8, 9, seed=6), tmp_path / "t.png"), 10, 50, False, 0, 0)
    assert "n/a (image under 11 px)" in tiny[3]


def odd_mode_files(tmp_path) -> dict[str, tuple[str, np.ndarray, str]]:
    """name -> (file path, the pixels the project's rule gives, words the demo must say)."""
    rgb8 = natural_image(24, 20, seed=8)
    gray16 = np.random.default_rng(0).integers(0, 65536, (24, 20)).astype(np.uint16)
    rgb16 = np.random.default_rng(1).integers(0, 65536, (24, 20, 3)).astype(np.uint16)
    alpha = np.zeros((24, 20, 1), np.uint8)  # fully transparent: white after compositing
    (tmp_path / "rgb48.png").write_bytes(png48(rgb16))
    cmyk = Image.fromarray(rgb8).convert("CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    return {
        "cmyk": (save(cmyk, tmp_path / "cmyk.jpg", quality=95), np.asarray(cmyk.convert("RGB")), "CMYK"),
        "gray16": (save(gray16, tmp_path / "g16.png"), np.repeat(np.rint(gray16 / 257)[..., None], 3, 2), "16-bit"),
        "rgb48": (str(tmp_path / "rgb48.png"), (rgb16 >> 8).astype(np.uint8), "16 bits per channel"),
        "rgba": (save(np.concatenate([rgb8, alpha], 2), tmp_path / "a.png"), np.full_like(rgb8, 255), "over white"),
        "gray": (save(rgb8[..., 0], tmp_path / "g.png"), np.repeat(rgb8[..., :1], 3, 2), "grayscale"),
        "exif": (save(rgb8, tmp_path / "r.jpg", quality=95, exif=exif), np.rot90(rgb8, -1), "EXIF orientation 6"),
    }


@pytest.mark.parametrize("kind", ["cmyk", "gray16", "rgb48", "rgba", "gray", "exif"])
def test_odd_modes_are_normalised_and_explained(handlers, checkpoint, tmp_path, kind):
    path, rgb8, words = odd_mode_files(tmp_path)[kind]
    upload = read_upload(path)
    assert np.array_equal(upload.rgb8, load_rgb8(path)) and upload.rgb8.shape == rgb8.shape
    if kind not in ("cmyk", "exif"):  # lossless files: the exact pixels of the rule (JPEGs: load_rgb8 only)
        assert np.array_equal(upload.rgb8, rgb8.astype(np.uint8))
    assert any(words in note for note in upload.notes)
    with pytest.warns(UserWarning, match=words):  # gr.Warning outside a Gradio event
        _, downloads, _, report, _ = restore(handlers, [path])
    assert "converted: " in report and words in report
    assert_close8(load_rgb8(downloads[0]), expected_restore(checkpoint, upload.rgb8))


def test_plain_rgb_has_no_conversion_note(tmp_path):
    assert read_upload(save(natural_image(16, 16, seed=9), tmp_path / "p.png")).notes == ()
    assert read_upload(save(natural_image(16, 16, seed=9), tmp_path / "p.jpg", quality=90)).notes == ()


@pytest.mark.parametrize("kind", ["text", "empty", "truncated"])
def test_bad_files_get_clear_errors(handlers, tmp_path, kind):
    path, words = bad_files(tmp_path)[kind]
    with pytest.raises(gr.Error, match=re.escape(words)):
        restore(handlers, [path])
    with pytest.raises(gr.Error, match=re.escape(words)):
        handlers.simulate(path, 10, 50, False, 0, 0)


def test_a_bad_file_among_good_ones_is_skipped_with_a_warning(handlers, tmp_path):
    bad, words = bad_files(tmp_path)["text"]
    good = save(natural_image(20, 20, seed=11), tmp_path / "good.png")
    with pytest.warns(UserWarning, match=re.escape(words)):
        _, downloads, pick, report, _ = restore(handlers, [bad, good])
    assert [os.path.basename(p) for p in downloads] == ["good_restored.png"] and not pick.visible
    assert f"- skipped: {words}" in report


def test_images_over_the_limit_are_refused_with_the_limit_stated(checkpoint, tmp_path):
    small = build_app(open_backend(checkpoint, device="cpu"), max_pixels=1000, workroot=tmp_path / "work").handlers
    assert "Images up to 0.0 MP (1,000 pixels) are restored" in model_summary(small.backend, small.max_pixels)
    path = save(natural_image(40, 30, seed=12), tmp_path / "big.png")  # 1200 pixels
    for call in (lambda: restore(small, [path]), lambda: small.simulate(path, 10, 50, False, 0, 0)):
        with pytest.raises(gr.Error, match=r"big.png is too large .*up to 0.0 MP \(1,000 pixels.*refuses larger"):
            call()
    assert restore(small, [save(natural_image(25, 40, seed=12), tmp_path / "ok.png")])[1]  # exactly 1000 pixels


def test_backend_notes_are_shown(checkpoint, tmp_path):
    backend = open_backend(checkpoint, device="cpu")
    backend.notes.append("the fp16 output was NaN; recomputed in fp32 (kept)")  # as a precision fallback writes
    handlers = build_app(backend, workroot=tmp_path / "work").handlers
    assert "- the fp16 output was NaN" in model_summary(backend, handlers.max_pixels)
    path = save(natural_image(16, 16, seed=13), tmp_path / "n.png")
    assert "model note: the fp16 output was NaN" in restore(handlers, [path])[3]
    assert "Model note: the fp16 output was NaN" in handlers.simulate(path, 5, 50, False, 0, 0)[3]


def test_missing_uploads_are_reported(handlers):
    with pytest.raises(gr.Error, match="Upload one or more images"):
        restore(handlers, [])
    with pytest.raises(gr.Error, match="Upload a clean image"):
        handlers.simulate(None, 10, 50, False, 0, 0)


def test_a_large_upload_is_restored_in_tiles_with_progress(handlers, checkpoint, tmp_path, monkeypatch):
    """An upload over the memory limit (lowered here, as a 12 MP photo meets the real one) goes through the tiled
    path `python -m infer` uses, and Gradio's bar is told the tiles as they finish."""
    import infer.tiling

    monkeypatch.setattr(infer.tiling, "CPU_ACTIVATION_LIMIT_BYTES", 2**20)
    rgb8 = natural_image(300, 420, seed=4)
    path = save(rgb8, tmp_path / "big.png")
    calls = []
    folder = tmp_path / "out"
    folder.mkdir()
    results, problems = handlers._restore_all([path], folder, None, lambda *args, **kwargs: calls.append(kwargs))
    assert not problems and len(results) == 1
    tiles = [c["desc"] for c in calls if "tile" in c.get("desc", "")]
    assert tiles and tiles[-1].startswith("big.png: tile") and "left" in tiles[-1]
    expected = infer.tiling.restore(open_backend(checkpoint, device="cpu"), to_tensor(rgb8)[None])
    assert_close8(load_rgb8(results[0]["restored"]), to_rgb8_array(expected[0]))


@pytest.mark.skipif(not SHIPPED_MODEL.with_suffix(".onnx").is_file(), reason="the shipped ONNX export is absent")
def test_the_default_model_shows_the_strength_control_on_the_default_runtime():
    """`python -m demo` with no model: the fastest runtime here runs the shipped ONNX export, which takes the
    condition, so the Restore tab shows the dial."""
    backend = open_backend(None, device="cpu")
    assert not backend.name.startswith("checkpoint"), backend.chosen  # the ONNX export stands in
    assert "strength control available" in model_summary(backend, 10**6), model_summary(backend, 10**6)
