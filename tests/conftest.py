"""What the test modules share (no test module imports another): the device under test (TORCH_DEVICE, default
cpu), small natural-looking images, tiny models and checkpoints, the trainer's tiny config and shards, and the
helpers of the demo and inference tests."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import socket
import tempfile
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when Gradio is imported (demo/__init__.py does the same)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # or gradio_client's Hub helper looks up huggingface.co
if "GRADIO_TEMP_DIR" not in os.environ:  # Gradio reads it at import: keep its cache out of the shared /tmp/gradio
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="ml-restoration-test-gradio-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)

import numpy as np  # noqa: E402  (after the Gradio environment, which Gradio reads at import)
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_NAFNET = {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1, "dec_blocks": (1, 1)}
FAKE_RGB_ICC = bytes(16) + b"RGB " + bytes(16) + b"acsp" + bytes(88)  # an ICC header: Pillow stores it as is


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


def randomise_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every parameter random values, so zero-initialised branches and tails no longer hide anything."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def tiny_source(conditioned: bool = False, seed: int = 1):
    """A tiny NAFNet with random weights as an export source (`export.parity.Source`, step 7), without a file."""
    from export.parity import Source
    from model import create_model

    model = randomise_(create_model("nafnet", conditioned=conditioned, **TINY_NAFNET), seed=seed).eval()
    return Source(model, Path("tiny.pt"), "nafnet", {**TINY_NAFNET, "conditioned": conditioned}, 7)


def natural_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with smooth gradients, edges and texture: enough structure to exercise a codec."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(40, 200, 3)[None, None] + 40 * np.sin(xx[..., None] / rng.uniform(3, 15, 3) + yy[..., None] / 9)
    edge = (xx + rng.uniform(-0.5, 0.5) * yy > width / 2)[..., None] * rng.uniform(-60, 60, 3)
    texture = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + edge + texture, 0, 255).astype(np.uint8)


def shared_images(subset: str, limit: int) -> list[Path]:
    folder = SHARED_DATA / subset
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared data set is optional)")
    return sorted(folder.glob("*.png"))[:limit]


# A trainer config that runs in seconds on a CPU (tests of the trainer and of what it feeds).
TINY_MODEL_AND_LOADER = [
    "model.name=resnet",
    "model.kwargs={width: 8, num_blocks: 2}",
    "loader.batch_size=4",
    "loader.patch_size=32",
    "loader.workers=0",
    "loader.crops_per_image=2",
]
TINY = TINY_MODEL_AND_LOADER + [
    "run.steps=12",
    "run.log_every=2",
    "run.val_every=6",
    "run.ckpt_every=3",
    "run.threads=1",
    "run.sanity_steps=1000",
    "optim.warmup_steps=3",
    "val.crop=48",
    "val.variants=2",
    "log.wandb=off",
]


def tiny_config(*extra: str):
    """The CPU default config with `TINY` and `extra` overrides: a trainer run of seconds."""
    from train.config import load_config

    return load_config("cpu", None, TINY + list(extra))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Ten small natural-looking images packed into train and val shards."""
    from shards.pack import pack

    root = tmp_path_factory.mktemp("train")
    src = root / "src"
    src.mkdir()
    for i in range(10):
        Image.fromarray(natural_image(64, 72, seed=200 + i)).save(src / f"{i}.png")
    pack(src, root / "shards", val_fraction=0.2, seed=0, min_shards=2)
    return root / "shards"


# --- tiny NAFNets and their checkpoints (inference, demo) -------------------------------------------------------


def tiny_nafnet(conditioned: bool = False, seed: int = 1) -> torch.nn.Module:
    """A tiny NAFNet with random weights and small residual branches: a plausible, non-saturated output."""
    from model import create_model

    torch.manual_seed(seed)
    model = create_model("nafnet", **TINY_NAFNET, conditioned=conditioned)
    with torch.no_grad():
        randomise_(model, seed)
        for block in model.modules():
            if hasattr(block, "beta"):
                block.beta.mul_(0.1), block.gamma.mul_(0.1)
        model.ending.weight.mul_(0.1)
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: Path, **kwargs) -> Path:
    torch.save({"model": model.state_dict(), "model_name": "nafnet", "model_kwargs": {**TINY_NAFNET, **kwargs}}, path)
    return path


@pytest.fixture(scope="module")
def blind_ckpt(tmp_path_factory) -> Path:
    """A blind tiny NAFNet's checkpoint, written once per module."""
    return save_checkpoint(tiny_nafnet(), tmp_path_factory.mktemp("models") / "blind.pt")


def write_tiny_checkpoint(path: Path, conditioned: bool = False, seed: int = 1) -> Path:
    """A tiny NAFNet with random weights (its fresh output conv is zero, i.e. the identity), shrunk so the
    restoration is a visible but moderate change."""
    from model import create_model

    kwargs = TINY_NAFNET | {"conditioned": conditioned}
    model = randomise_(create_model("nafnet", **kwargs), seed=seed)
    with torch.no_grad():
        model.ending.weight.mul_(0.1)
        model.ending.bias.mul_(0.1)
    torch.save({"model": model.state_dict(), "model_name": "nafnet", "model_kwargs": kwargs}, path)
    return path


def expected_restore(checkpoint: Path, rgb8: np.ndarray, condition: torch.Tensor | None = None) -> np.ndarray:
    """The model run directly, without the demo or the CLI: what every restored PNG must hold."""
    from model import load_model
    from pipeline.io import to_rgb8_array, to_tensor

    model = load_model(checkpoint)
    with torch.no_grad():
        return to_rgb8_array(model(to_tensor(rgb8).unsqueeze(0), condition)[0])


def assert_close8(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1  # float paths may round one level apart


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run thousands of small ops: one thread avoids the cost of waking a pool for each (and of
    fighting over the cores with other jobs on a busy 2-core machine). Modules opt in with `usefixtures`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args) -> int:
    """`python -m infer` in this process: its exit code."""
    from infer.cli import main

    return main([str(a) for a in args])


# --- files ----------------------------------------------------------------------------------------------------


def save(image: np.ndarray | Image.Image, path, **kwargs) -> str:
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return str(path)


def write_image(path: Path, rgb8: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb8).save(path, **save_kwargs)
    return path


def bad_files(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (file path, words the error must contain): a text file, an empty file, a truncated PNG."""
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = io.BytesIO()
    Image.fromarray(natural_image(32, 32, seed=10)).save(data, "PNG")
    (tmp_path / "cut.png").write_bytes(data.getvalue()[:200])
    return {
        "text": (str(tmp_path / "text.png"), "text.png is not an image"),
        "empty": (str(tmp_path / "empty.jpg"), "empty.jpg is empty (zero bytes)"),
        "truncated": (str(tmp_path / "cut.png"), "cut.png is a damaged image file"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_error_line(stderr: str, *words: str) -> str:
    """The error line of a refused command: exactly one, no traceback, holding `words`."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert all(word in lines[0] for word in words), (words, lines[0])
    return lines[0]
