"""export/: TorchScript and ONNX parity at odd sizes with dynamic shapes, conditioned and fp16 graphs, the output
checker, TensorRT planning (gtx1060 preset, profiles, calibration data), the CLI; TensorRT itself where present."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_NAFNET, natural_image, tiny_source
from PIL import Image

import export.onnx as onnx_export
import export.trt_plan as plan
from bench import merge_runs
from bench.infer import forward_markdown, measure_child
from export.__main__ import main
from export.calibration import CalibrationError, calibration_batches
from export.checks import output_problem
from export.onnx import export_onnx, norm_precisions, ort_session, read_metadata, run_session
from export.parity import ExportError, Source, load_source, metadata
from export.tensorrt import EngineRunner, export_tensorrt
from export.torchscript import export_torchscript
from export.torchscript import read_metadata as read_ts_metadata
from export.trt_build import build_engine, write_sidecar
from export.trt_plan import PlanError, make_profile
from model import SHIPPED_MODEL
from shards.pack import pack

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: tiny convolutions only lose to thread start-up, and collapse on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def overflow_source() -> Source:
    """A tiny model whose intermediate values exceed float16's 65504; its output scale stays sane in float32."""
    source = tiny_source()
    with torch.no_grad():
        source.model.intro.weight.mul_(3e5)
        source.model.ending.weight.div_(3e5)
    return source


def eager(source: Source, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return source.model(*inputs)


def test_output_problem_flags_nan_inf_constant():
    good = torch.rand(2, 3, 8, 9)
    assert output_problem(good) is None
    assert output_problem(good.clone().index_fill_(2, torch.tensor([3]), float("nan"))) == "NaN"
    assert output_problem(good.clone().index_fill_(3, torch.tensor([0]), float("inf"))) == "inf"
    black = torch.cat([good[:1], torch.zeros(1, 3, 8, 9)])
    assert output_problem(black) == "constant image"
    assert output_problem(black, degraded=black) is None  # a flat input may give a flat output
    assert output_problem(black[1]) == "constant image"  # (C, H, W)
    assert output_problem(torch.zeros(1, 3, 1, 1)) is None  # a single pixel is always "constant"


def test_torchscript_parity_and_dynamic_shapes(tmp_path):
    source = tiny_source()
    out = tmp_path / "tiny.ts"
    assert export_torchscript(source, out) <= 1e-5  # traced at 1x3x64x64, verified at 1x3x67x93 and 2x3x45x71
    loaded = torch.jit.load(str(out))
    degraded = torch.rand(3, 3, 21, 38)
    torch.testing.assert_close(loaded(degraded), eager(source, degraded), atol=1e-5, rtol=0)
    meta = read_ts_metadata(out)
    assert meta["model_name"] == "nafnet" and meta["stride"] == "4" and meta["step"] == "7"


def test_onnx_fp32_parity_dynamic_and_metadata(tmp_path):
    source = tiny_source()
    out = tmp_path / "tiny.onnx"
    assert export_onnx(source, out) <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # weights inside, no side file
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = ort_session(out)
    for shape in [(3, 3, 16, 16), (1, 3, 1, 5)]:  # neither is the export shape 1x3x64x64
        degraded = torch.rand(shape)
        restored = run_session(session, (degraded,))
        assert (restored - eager(source, degraded)).abs().max() <= 1e-4
    meta = read_metadata(out)
    assert meta["model_name"] == "nafnet" and meta["stride"] == "4" and meta["precision"] == "fp32"
    assert '"width": 8' in meta["model_kwargs"] and meta["step"] == "7"
    out.write_bytes(b"previous good file")  # a failed export must leave it as it was
    with pytest.raises(ExportError, match="exceeds the tolerance"):
        export_onnx(source, out, tolerance=-1.0)  # no difference is below a negative tolerance
    assert out.read_bytes() == b"previous good file" and [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]


def test_onnx_fp16_runs_keeps_norm_statistics_fp32_and_catches_nan(tmp_path):
    source = tiny_source()
    out = tmp_path / "half.onnx"
    assert export_onnx(source, out, fp16=True) <= 1e-2
    restored = run_session(ort_session(out), (torch.rand(2, 3, 33, 47),))
    assert restored.dtype == torch.float32 and output_problem(restored) is None
    graph = onnx.load(str(out)).graph
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv"}
    types = {t.name: t.data_type for t in graph.initializer if t.name in conv_weights}
    assert len(types) == len(conv_weights) > 0 and set(types.values()) == {onnx.TensorProto.FLOAT16}
    statistics = norm_precisions(out)
    assert len(statistics) == 10 and set().union(*statistics.values()) == {"float32"}  # 5 blocks x 2 norms
    with pytest.raises(ExportError, match="NaN|inf"):
        export_onnx(overflow_source(), tmp_path / "overflow.onnx", fp16=True)
    assert not (tmp_path / "overflow.onnx").exists()


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped weights are absent")
def test_shipped_model_onnx_parity(tmp_path):
    assert export_onnx(load_source(SHIPPED_MODEL), tmp_path / "shipped.onnx", conditioned=None, pooled_io=True) <= 1e-4


def test_gtx1060_preset_refuses_fp16_with_reason():
    gtx = plan.TARGETS["gtx1060"]
    with pytest.raises(PlanError, match="1/64 of its FP32 rate"):
        plan.plan_precision("fp16", gtx)
    assert plan.plan_precision(None, gtx) == "fp32" and plan.plan_precision("int8", gtx) == "int8"
    assert plan.plan_precision("fp16", None) == "fp16"
    with pytest.raises(PlanError, match="up to TensorRT 8"):
        plan.check_trt_version("10.3.0", gtx)
    assert plan.check_trt_version("8.6.1", gtx) == []
    with pytest.raises(PlanError, match="architecture it was built on"):
        plan.check_device((8, 6), gtx)
    plan.check_device((6, 1), gtx)


def test_plan_typing_by_tensorrt_version():
    assert plan.plan_typing("8.6.1", "fp16", "fp32") == (False, [])  # weakly typed: flags + FP32 pins
    assert plan.plan_typing("10.3.0", "fp16", "fp16") == (True, [])  # the fp16 graph's own types decide
    assert "TensorRT#3941" in plan.plan_typing("10.3.0", "fp16", "fp32")[1][0]
    for args in [("8.6.1", "fp32", "fp16"), ("11.0", "int8", "fp32"), ("11.0", "fp16", "fp32")]:
        with pytest.raises(PlanError, match="from the fp32 export|Q/DQ|from an fp16 ONNX"):
            plan.plan_typing(*args)


def test_cli_refuses_fp16_for_gtx1060_before_needing_tensorrt(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tensorrt", "--target", "gtx1060", "--precision", "fp16", "--out", str(tmp_path / "x.engine")])
    assert exit_info.value.code == 1 and "1/64" in capsys.readouterr().err
    assert not (tmp_path / "x.engine").exists()


def test_profile_validation_and_parity_shape():
    profile = make_profile(*map(plan.parse_shape, ["1x3x16x16", "2x3x256x256", "4x3x1024x1024"]))
    shape = plan.parity_shape(profile, stride=16)
    assert profile.covers(shape) and shape[2] % 16 and shape[3] % 16
    tight = make_profile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 65, 64))
    assert plan.parity_shape(tight, 16)[2:] == (65, 64)  # width has no other choice
    for bad in [((1, 3, 64, 64), (1, 3, 32, 64), (1, 3, 128, 128)), ((1, 4, 8, 8),) * 3, ((0, 3, 8, 8),) * 3]:
        with pytest.raises(PlanError):
            make_profile(*bad)
    with pytest.raises(PlanError, match="N x 3 x H x W"):
        plan.parse_shape("3x256x256")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calib")
    (root / "src").mkdir()
    for index in range(8):
        Image.fromarray(natural_image(48 + 4 * index, 64, seed=index)).save(root / "src" / f"{index}.png")
    pack(root / "src", root / "shards", val_fraction=0.5, seed=0, min_shards=1)
    return root / "shards"


def test_calibration_batches_from_real_shards(shards):
    batches = calibration_batches(shards, (2, 3, 40, 56), num_batches=3, seed=0)
    assert len(batches) == 3 and all(b.shape == (2, 3, 40, 56) and b.dtype == np.float32 for b in batches)
    stacked = np.stack(batches)
    assert stacked.min() >= 0 and stacked.max() <= 1 and stacked.std() > 0.05
    assert np.allclose(stacked * 255, np.round(stacked * 255), atol=1e-3)  # 8-bit degraded files, not float noise
    assert np.array_equal(stacked, np.stack(calibration_batches(shards, (2, 3, 40, 56), 3)))  # deterministic
    assert not np.array_equal(stacked, np.stack(calibration_batches(shards, (2, 3, 40, 56), 3, seed=1)))
    with pytest.raises(CalibrationError, match="at least 500x500"):
        calibration_batches(shards, (1, 3, 500, 500), 1)


def tiny_checkpoint(folder: Path) -> Path:
    checkpoint = folder / "tiny.pt"
    state = {"model": tiny_source().model.state_dict(), "model_name": "nafnet", "model_kwargs": TINY_NAFNET, "step": 3}
    torch.save(state, checkpoint)
    return checkpoint


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_end_to_end_and_bad_checkpoint(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path)
    result = run_module("export", "onnx", "--model", str(checkpoint), "--out", str(tmp_path / "t.onnx"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parity onnx fp32 on 1x3x67x93: max abs diff" in result.stdout and (tmp_path / "t.onnx").is_file()
    main(["torchscript", "--model", str(checkpoint), "--out", str(tmp_path / "t.ts")])
    assert "parity torchscript" in capsys.readouterr().out and (tmp_path / "t.ts").is_file()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a checkpoint")
    for model in (broken, tmp_path / "missing.pt"):
        with pytest.raises(SystemExit) as exit_info:
            main(["onnx", "--model", str(model), "--out", str(tmp_path / "b.onnx")])
        assert exit_info.value.code == 1
        assert f"{model}" in capsys.readouterr().err and not (tmp_path / "b.onnx").exists()


def test_bench_child_measures_eager_and_ort(tmp_path):
    files = {"onnx": str(tmp_path / "tiny.onnx")}
    export_onnx(tiny_source(), files["onnx"])
    spec = {"size": 48, "threads": 1, "device": "cpu", "model": str(tiny_checkpoint(tmp_path)), "files": files}
    runs = {name: [measure_child({**spec, "backend": name}) for _ in range(2)] for name in ("eager", "ort")}
    rows = [merge_runs({"backend": name}, measured) for name, measured in runs.items()]
    assert all(row["ms_per_mpix"] > 0 and len(row["times_ms"]) == 2 and row["peak_rss_mib"] > 0 for row in rows)
    assert "| ort | 48x48 |" in forward_markdown(rows)


FOUND = {"TensorRT": importlib.util.find_spec("tensorrt") is not None, "CUDA": torch.cuda.is_available()}
MISSING = [name for name, found in FOUND.items() if not found]
needs_trt = pytest.mark.skipif(bool(MISSING), reason=f"needs TensorRT and a CUDA GPU; missing here: {MISSING}")


@needs_trt
@pytest.mark.cuda
def test_tensorrt_fp32_engine_parity_and_runner(tmp_path):
    source = tiny_source()
    profile = make_profile((1, 3, 16, 16), (2, 3, 64, 64), (2, 3, 128, 128))
    out = tmp_path / "tiny.engine"
    assert export_tensorrt(out, profile=profile, source=source, timing_cache=tmp_path / "timing.cache") <= 1e-3
    assert (tmp_path / "timing.cache").stat().st_size > 0
    runner = EngineRunner(out)
    degraded = torch.rand(5, 3, 45, 77)  # batch above the profile's max of 2: run in chunks
    restored = runner(degraded)
    assert restored.device.type == "cpu" and runner.precision == "fp32" and runner.fell_back is None
    assert (restored - eager(source, degraded)).abs().max() <= 1e-3
    with pytest.raises(ValueError, match="outside"):
        runner(torch.rand(1, 3, 300, 64))


@needs_trt
@pytest.mark.cuda
def test_tensorrt_fp16_engine_falls_back_to_fp32(tmp_path):
    import tensorrt

    source, degraded = overflow_source(), torch.rand(1, 3, 67, 93)
    profile = make_profile((1, 3, 16, 16), (1, 3, 64, 64), (1, 3, 128, 128))
    fp32_onnx, fp16_onnx, engine = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx", tmp_path / "m.engine"
    export_onnx(source, fp32_onnx)
    half = onnx_export.OnnxGraph(source.model, half=True).eval()
    onnx_export.write_graph(half, fp16_onnx, 17, conditioned=False, static_shape=None)  # no parity: it overflows
    onnx_export.finish(fp16_onnx, 17, metadata(source, precision="fp16"))
    typed = int(tensorrt.__version__.split(".")[0]) >= 10  # strongly typed: float16 everywhere the graph says
    info = build_engine(fp16_onnx if typed else fp32_onnx, engine, profile=profile, precision="fp16")
    write_sidecar(engine, {**info, "fp32_onnx": str(fp32_onnx)})
    runner = EngineRunner(engine)
    with pytest.warns(RuntimeWarning, match="fell back to an FP32 engine"):
        if not typed:  # weak typing lets TensorRT keep layers in FP32, so the overflow is not guaranteed
            runner._fall_back("NaN")
        restored = runner(degraded)
    assert runner.fell_back and runner.precision == "fp32" and (tmp_path / "m.fp32.engine").is_file()
    assert output_problem(restored) is None and (restored - eager(source, degraded)).abs().max() <= 1e-2
