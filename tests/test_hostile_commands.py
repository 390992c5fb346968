"""Every command as a hostile user runs it (training in test_hostile_runs.py): flipped bytes in a model file,
files of the wrong kind, outputs that would collide or land on the inputs, tiny images, a full disk, Ctrl+C and
SIGTERM, a port in use. Each case must give the right result or one clear line and the documented exit status
(1 expected failure, 2 infer's unusable options or model, 130 Ctrl+C, 143 SIGTERM), and lose nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_NAFNET, free_port, natural_image, one_error_line, run_cli, tiny_nafnet, write_image
from PIL import Image

from model import SHIPPED_MODEL, create_model, load_model
from model.files import CHECKSUM_KEY, read_checkpoint, with_checksum
from pipeline.command import run_command
from train.run import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def command(*args: str) -> list[str]:
    return [sys.executable, *args]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny NAFNet checkpoint written with the checksum, as every file the project saves."""
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    model = tiny_nafnet()
    torch.save(with_checksum({"model": model.state_dict(), "model_name": "nafnet", "model_kwargs": TINY_NAFNET}), path)
    return path


def flip(path: Path, out: Path, count: int = 64) -> Path:
    """`count` bytes inverted a third of the way in: inside the tensor data, where torch checks nothing."""
    data = bytearray(path.read_bytes())
    at = len(data) // 3
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    out.write_bytes(bytes(data))
    return out


# --- model files ------------------------------------------------------------------------------------------------


def test_the_shipped_weights_carry_a_checksum_that_holds():
    checkpoint = read_checkpoint(SHIPPED_MODEL)
    assert len(checkpoint[CHECKSUM_KEY]) == 64
    for name in ("nafnet16-cbsd432.pt", "nafnet16-strength-cbsd432-p4.pt"):
        assert CHECKSUM_KEY in read_checkpoint(SHIPPED_MODEL.with_name(name))


def test_flipped_bytes_in_a_model_are_refused_by_every_command(model_file, tmp_path):
    flipped = flip(model_file, tmp_path / "flipped.pt")
    assert torch.load(flipped, weights_only=True)["model"], "torch itself loads the damaged file"
    photo = write_image(tmp_path / "photo.png", natural_image(24, 24, 1))
    status = run_cli(photo, "--out", tmp_path / "out", "--model", flipped)
    assert status == 2 and not (tmp_path / "out" / "photo.png").exists()
    for args in (
        ["-m", "export", "onnx", "--model", str(flipped), "--out", str(tmp_path / "m.onnx")],
        ["-m", "evaluate", "--model", str(flipped), "--data", str(tmp_path), "--out", str(tmp_path / "ev")],
    ):
        done = run(*args)
        assert done.returncode == 1, done.stderr
        assert "damaged" in done.stderr and "checksum" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match="checksum"):  # warm starts read through the same check
        train_main(["--shards", str(tmp_path), "--out", str(tmp_path / "run"), "--set", f"model.init={flipped}"])


def test_a_foreign_file_without_a_checksum_loads_as_before(tmp_path):
    model = create_model("resnet", width=8, num_blocks=2)
    torch.save({"params": model.state_dict()}, tmp_path / "basicsr.pth")
    loaded = load_model(tmp_path / "basicsr.pth", name="resnet", kwargs={"width": 8, "num_blocks": 2})
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_wrong_files_are_named_in_their_own_words(model_file, tmp_path):
    """The project's ONNX export, a TorchScript file and a text file named .pt: each said for what it is, and
    never torch's advice to load with weights_only=False."""
    scripted = torch.jit.trace(create_model("resnet", width=8, num_blocks=2).eval(), torch.rand(1, 3, 16, 16))
    scripted.save(str(tmp_path / "scripted.pt"))
    (tmp_path / "garbage.pt").write_text("not a model\n" * 20)
    cases = {
        SHIPPED_MODEL.with_suffix(".onnx"): "is an ONNX file",
        tmp_path / "scripted.pt": "is a TorchScript file",
        tmp_path / "garbage.pt": "is not a PyTorch checkpoint",
    }
    for path, words in cases.items():
        done = run("-m", "evaluate", "--model", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "ev"))
        assert done.returncode == 1 and words in done.stderr, done.stderr
        assert "will likely succeed" not in done.stderr and "Traceback" not in done.stderr
    done = run("-m", "export", "onnx", "--model", str(tmp_path / "scripted.pt"), "--out", str(tmp_path / "x"))
    assert done.returncode == 1 and "is a TorchScript file" in done.stderr, done.stderr


# --- infer outputs ----------------------------------------------------------------------------------------------


def test_skip_existing_matches_each_input_to_its_own_output(model_file, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "IMG_1.png", natural_image(20, 24, 1))
    assert run_cli(src, "--out", out, "--model", model_file) == 0
    first = (out / "IMG_1.png").read_bytes()
    write_image(src / "IMG_1.jpg", natural_image(20, 24, 2), format="JPEG")
    capsys.readouterr()
    assert run_cli(src, "--out", out, "--model", model_file, "--skip-existing") == 0
    assert "1 written, 1 skipped" in capsys.readouterr().out
    assert (out / "IMG_1.png").read_bytes() == first  # the PNG's output kept its name and was not redone
    with Image.open(out / "IMG_1.jpg.png") as img:
        assert img.info["restored-from"] == "IMG_1.jpg.png <- IMG_1.jpg"
    assert sorted(p.name for p in out.iterdir()) == ["IMG_1.jpg.png", "IMG_1.png"]


def test_an_output_made_from_another_input_is_not_taken_for_this_ones(model_file, tmp_path, capsys):
    """IMG_1.jpg restored alone wrote IMG_1.png; once IMG_1.png joins it, that name is the PNG's: redone."""
    src, out = tmp_path / "src", tmp_path / "out"
    write_image(src / "IMG_1.jpg", natural_image(20, 24, 2), format="JPEG")
    assert run_cli(src, "--out", out, "--model", model_file) == 0
    write_image(src / "IMG_1.png", natural_image(20, 24, 1))
    capsys.readouterr()
    assert run_cli(src, "--out", out, "--model", model_file, "--skip-existing") == 0
    assert "2 written, 0 skipped" in capsys.readouterr().out
    with Image.open(out / "IMG_1.png") as img:
        assert img.info["restored-from"] == "IMG_1.png <- IMG_1.png"


def test_inputs_inside_out_are_refused_before_any_work(model_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"p{i}.png", natural_image(16, 16, i))
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    for args in ([photos / "p0.png", photos / "p1.png", "--out", photos], [photos, "--out", photos / "restored"]):
        assert run_cli(*args, "--model", model_file) == 2
        captured = capsys.readouterr()
        one_error_line(captured.err, "--out", "choose an --out outside")
        assert "model:" not in captured.out  # refused before the model was opened
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_infer_with_out_a_file_fails_once_before_the_model_runs(model_file, tmp_path, capsys):
    photo = write_image(tmp_path / "a.png", natural_image(16, 16, 0))
    (tmp_path / "out").write_text("a file\n")
    assert run_cli(photo, "--out", tmp_path / "out", "--model", model_file) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, "is a file")
    assert "restoring" not in captured.err and "model:" not in captured.out


def test_ctrl_c_in_infer_is_one_line_and_130(model_file, tmp_path):
    src = tmp_path / "src"
    for i in range(40):
        write_image(src / f"{i}.png", natural_image(256, 256, i))
    process = subprocess.Popen(
        command("-m", "infer", str(src), "--out", str(tmp_path / "out"), "--model", str(model_file)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "python -m infer: stopped (Ctrl+C)" in err and "Traceback" not in err
    assert not list((tmp_path / "out").glob(".*.partial"))


# --- evaluate ---------------------------------------------------------------------------------------------------


def test_evaluate_names_a_tiny_image_and_keeps_the_others(tmp_path):
    data = tmp_path / "data"
    write_image(data / "a.png", natural_image(24, 24, 1))
    write_image(data / "b_tiny.png", natural_image(8, 8, 2))
    write_image(data / "c.png", natural_image(24, 28, 3))
    done = run(
        *("-m", "evaluate", "--model", "identity", "--data", str(data), "--out", str(tmp_path / "ev")),
        *("--sigmas", "15", "--qualities", "none", "--quiet", "--crops-per-cell", "0"),
    )
    assert done.returncode == 0, done.stderr
    assert "b_tiny.png: 8x8 px, smaller than SSIM's 11x11 window" in done.stderr
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["images"] == ["a.png", "c.png"]


def test_evaluate_checks_out_and_limit_before_any_work(tmp_path):
    write_image(tmp_path / "data" / "a.png", natural_image(24, 24, 1))
    (tmp_path / "taken").write_text("a file\n")
    base = ["-m", "evaluate", "--model", "identity", "--data", str(tmp_path / "data")]
    done = run(*base, "--out", str(tmp_path / "taken"))
    assert done.returncode == 1 and "is a file" in done.stderr and "evaluating" not in done.stdout, done.stderr
    done = run(*base, "--out", str(tmp_path / "ev"), "--limit", "-1")
    assert done.returncode == 1 and "--limit must be 1 or more" in done.stderr, done.stderr


# --- disks, signals, ports --------------------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to fill a disk with")
def test_a_full_disk_is_one_line_with_the_fix(capsys):
    def write_to_full_disk(argv: list[str]) -> int:
        with open("/dev/full", "wb") as handle:
            handle.write(b"x" * 65536)
            handle.flush()
        return 0

    assert run_command(write_to_full_disk, "python -m shards.pack", []) == 1
    one_error_line(capsys.readouterr().err, "No space left on device", "free some space")


def test_pack_into_a_file_is_one_line(tmp_path):
    write_image(tmp_path / "src" / "a.png", natural_image(80, 80, 1))
    (tmp_path / "taken").write_text("a file\n")
    done = run("-m", "shards.pack", str(tmp_path / "src"), str(tmp_path / "taken"))
    assert done.returncode == 1 and str(tmp_path / "taken") in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "taken").read_text() == "a file\n"


def test_the_demo_port_in_use_is_one_line(model_file):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = run("-m", "demo", "--model", str(model_file), "--port", str(busy.getsockname()[1]))
    assert done.returncode == 1, done.stderr
    one_error_line(done.stderr, "is not free", "choose another --port")


def test_the_demo_cleans_its_temp_files_on_sigterm(model_file, tmp_path):
    port, env = free_port(), os.environ | {"TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen(
        command("-m", "demo", "--model", str(model_file), "--port", str(port), "--device", "cpu"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("ml-restoration-demo-*")) or not _listening(port):
            assert server.poll() is None and time.monotonic() < deadline, server.communicate()[0]
            time.sleep(0.25)
        (tmp_path / "gradio").mkdir(exist_ok=True)
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 143, output
    assert not list(tmp_path.glob("ml-restoration-demo-*")), "the work folder outlived SIGTERM"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_pixels_of_a_restored_file_are_unchanged_by_the_checksum(model_file, tmp_path):
    """The checksum changes nothing the model computes: the same output as the file without it."""
    plain = tmp_path / "plain.pt"
    checkpoint = torch.load(model_file, weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}, plain)
    x = torch.rand(1, 3, 19, 23)
    with torch.no_grad():
        assert np.array_equal(load_model(plain)(x).numpy(), load_model(model_file)(x).numpy())
