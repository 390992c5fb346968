"""infer/: every backend that runs here, the shipped model's runtime, memory estimates (tiling: test_infer_tiling.py;
the CLI: test_infer_cli.py). Tiny models written to tmp files."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import onnx
import pytest
import torch
from conftest import (
    natural_image,
    randomise_,
    save_checkpoint,
    tiny_nafnet,
)

import model as model_api
from infer.backends import open_backend
from infer.memory import bytes_per_pixel
from model import create_model, load_model
from model.condition import encode_condition
from pipeline.device import resolve_device
from pipeline.io import to_tensor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- backends ------------------------------------------------------------------------------------------------


def test_every_backend_matches_eager(tmp_path):
    """Checkpoint, TorchScript (.ts and a TorchScript .pt) and ONNX of one conditioned model agree with eager."""
    model = tiny_nafnet(conditioned=True)
    degraded = to_tensor(natural_image(37, 53, seed=0))[None].repeat(2, 1, 1, 1)  # odd size: internal padding
    condition = encode_condition(2, torch.tensor([5.0, 40.0]), torch.tensor([90.0, 20.0]))
    with torch.no_grad():
        expected = model(degraded, condition).clamp(0, 1)
    example = (degraded[:1], condition[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent padding
        traced = torch.jit.trace(model, example)
        torch.onnx.export(
            model,
            example,
            tmp_path / "m.onnx",
            dynamo=False,
            opset_version=17,
            input_names=["degraded", "condition"],
            output_names=["restored"],
            dynamic_axes={"degraded": {0: "n", 2: "h", 3: "w"}, "condition": {0: "n"}},
        )
    traced.save(tmp_path / "m.ts")
    traced.save(tmp_path / "scripted.pt")
    files = {
        "checkpoint": save_checkpoint(model, tmp_path / "m.pt", conditioned=True),
        "torchscript": tmp_path / "m.ts",
        "onnx": tmp_path / "m.onnx",
    }
    files["torchscript-pt"] = tmp_path / "scripted.pt"
    for kind, path in files.items():
        backend = open_backend(path, device="cpu")
        assert backend.name.startswith(kind.split("-")[0]), backend.name
        assert backend.conditioned and backend.device == torch.device("cpu") and backend.stride % 4 == 0
        restored = backend(degraded, condition)
        assert restored.shape == degraded.shape and restored.dtype == torch.float32
        assert restored.min() >= 0 and restored.max() <= 1
        torch.testing.assert_close(restored, expected, atol=2e-5, rtol=0, msg=kind)
        assert not torch.allclose(backend(degraded), restored, atol=1e-3), f"{kind}: the condition has no effect"


def test_blind_files_are_told_apart(tmp_path, blind_ckpt):
    model = load_model(blind_ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.rand(1, 3, 32, 32)).save(tmp_path / "blind.ts")
    for path in (blind_ckpt, tmp_path / "blind.ts"):
        backend = open_backend(path, device="cpu")
        assert not backend.conditioned
        with pytest.raises(ValueError, match="blind model"):
            backend(torch.rand(1, 3, 16, 16), encode_condition(1, 10.0))


def test_reduced_precision_falls_back_to_fp32_with_a_note(tmp_path):
    """A model whose activations overflow float16 (inf -> NaN) is recomputed in fp32 and stays there."""
    torch.manual_seed(0)
    model = create_model("resnet", width=8, num_blocks=1)
    with torch.no_grad():
        randomise_(model, seed=2)
        model.head.weight.mul_(1e6)  # weights and features ~1e5: fine in fp32, past float16 (max 65504)
        model.tail.weight.mul_(1e-6)
    torch.save(
        {"model": model.state_dict(), "model_name": "resnet", "model_kwargs": {"width": 8, "num_blocks": 1}},
        tmp_path / "big.pt",
    )
    degraded = to_tensor(natural_image(24, 24, seed=1))[None]
    backend = open_backend(tmp_path / "big.pt", device="cpu", precision="fp16")
    assert backend.precision == "fp16"
    restored = backend(degraded)
    assert backend.precision == "fp32" and any("fp16" in note and "fp32" in note for note in backend.notes)
    with torch.no_grad():
        torch.testing.assert_close(restored, model.eval()(degraded).clamp(0, 1))
    assert torch.isfinite(restored).all()


def test_an_fp16_onnx_graph_widens_to_fp32(tmp_path):
    """The fp32 fallback of an fp16 ONNX file (written by export.onnx): `float32_graph` widens every float16 in the
    graph and computes the stored weights in fp32. (onnxruntime's CPU provider already runs fp16 graphs through
    fp32 kernels, so the failure that triggers the fallback cannot be produced here: on a GPU provider it can.)"""
    import onnxruntime as ort

    from export.onnx import OnnxGraph, finish, write_graph
    from infer.backend_onnx import float32_graph

    model = tiny_nafnet()
    path = tmp_path / "half.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_graph(OnnxGraph(model, half=True), path, 17, False, None)
    finish(path, 17, {"precision": "fp16", "stride": str(model.stride)})
    backend = open_backend(path, device="cpu")
    assert backend.precision == "fp16" and backend.stride == model.stride
    degraded = to_tensor(natural_image(21, 27, seed=2))[None]
    with torch.no_grad():
        expected = model(degraded).clamp(0, 1)
    torch.testing.assert_close(backend(degraded), expected, atol=2e-2, rtol=0)
    widened = float32_graph(path)
    half = onnx.TensorProto.FLOAT16
    assert any(t.data_type == half for t in onnx.load(str(path)).graph.initializer)
    graph = onnx.load_from_string(widened).graph
    assert all(t.data_type != half for t in graph.initializer)
    assert all(a.i != half for node in graph.node for a in node.attribute if a.name == "to")
    session = ort.InferenceSession(widened, providers=["CPUExecutionProvider"])
    restored = torch.from_numpy(session.run(None, {"degraded": degraded.numpy()})[0]).clamp(0, 1)
    with torch.no_grad():
        stored = copy.deepcopy(model).half().float()(degraded).clamp(0, 1)  # the file's weights, in fp32
    torch.testing.assert_close(restored, stored, atol=1e-5, rtol=0)


def test_clear_errors_for_devices_and_files(tmp_path, blind_ckpt):
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            open_backend(blind_ckpt, device="cuda")
        (tmp_path / "m.engine").write_bytes(b"not built here")
        with pytest.raises(ValueError, match="needs a CUDA device"):
            open_backend(tmp_path / "m.engine", device="cpu")
    if not (torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="MPS"):
            open_backend(blind_ckpt, device="mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="precision"):
        open_backend(blind_ckpt, precision="int8")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        open_backend(tmp_path / "missing.pt")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="unknown model file type"):
        open_backend(tmp_path / "weights.bin")


def test_the_shipped_model_runs_on_the_fastest_usable_runtime(tmp_path, monkeypatch):
    """No model named: the ONNX export beside the checkpoint, through OpenVINO where installed, else onnxruntime;
    a missing or stale export (not made from this checkpoint) falls back to the checkpoint, saying why."""
    from export.onnx import export_onnx
    from export.parity import load_source

    checkpoint = save_checkpoint(tiny_nafnet(), tmp_path / "shipped.pt")
    monkeypatch.setattr(model_api, "SHIPPED_MODEL", checkpoint)
    backend = open_backend(None, device="cpu")
    assert backend.name.startswith("checkpoint") and "missing" in " ".join(backend.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(load_source(checkpoint), tmp_path / "shipped.onnx", conditioned=None, pooled_io=True)
    backend = open_backend(None, device="cpu")
    fastest = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
    assert backend.chosen.startswith(fastest) and "fastest" in backend.chosen, backend.chosen
    save_checkpoint(tiny_nafnet(seed=5), checkpoint)  # new weights, old export
    backend = open_backend(None, device="cpu")
    assert backend.name.startswith("checkpoint") and "not exported from" in " ".join(backend.notes)
    with pytest.raises(ValueError, match="not exported from"):
        open_backend(None, device="cpu", runtime="onnxruntime")


def test_memory_estimate_is_measured_once(blind_ckpt):
    backend = open_backend(blind_ckpt, device="cpu")
    first = bytes_per_pixel(backend)
    assert first > 0 and bytes_per_pixel(backend) == first


# --- CLI -------------------------------------------------------------------------------------------------------
