"""export.onnx's inputs: the condition input of a model with the strength control (blind when left out), and
graphs that a default onnxruntime session opens without warnings."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch
from conftest import tiny_source

from export.onnx import export_onnx, ort_session, read_metadata, run_session
from export.parity import ExportError, Source
from model import SHIPPED_MODEL
from model.condition import encode_condition
from model.pooling import POOLED_INPUTS


def run(source: Source, *inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return source.model(*inputs)


def test_onnx_graph_of_a_conditioned_model_takes_the_condition_blind_when_left_out(tmp_path):
    source = tiny_source(conditioned=True)
    torch.nn.init.normal_(source.model.film.mlp[-1].weight, std=0.2)  # zero-initialised: make FiLM do something
    blind, conditioned = tmp_path / "blind.onnx", tmp_path / "cond.onnx"
    export_onnx(source, blind, pooled_io=True)
    export_onnx(source, conditioned, conditioned=None, pooled_io=True)  # what `python -m export onnx` asks for
    assert [i.name for i in ort_session(blind).get_inputs()][:2] == ["degraded", "pooled_means"]
    session = ort_session(conditioned)
    assert [i.name for i in session.get_inputs()] == ["degraded", "condition", *POOLED_INPUTS]
    degraded = torch.rand(3, 3, 29, 35)
    condition = encode_condition(3, torch.tensor([5.0, 25.0, 50.0]), torch.tensor([10.0, 0.0, 90.0]))
    restored = run_session(session, (degraded, condition))
    assert (restored - run(source, degraded, condition)).abs().max() <= 1e-4
    assert (restored - run(source, degraded)).abs().max() > 1e-3  # the condition changes the output
    assert (run_session(session, (degraded,)) - run(source, degraded)).abs().max() <= 1e-4  # left out: blind
    assert read_metadata(conditioned)["conditioned"] == "True" and read_metadata(blind)["conditioned"] == "False"
    with pytest.raises(ExportError, match="blind"):
        run_session(ort_session(blind), (degraded, condition))


def test_exported_graph_opens_in_onnxruntime_without_warnings(tmp_path):
    """A plain onnxruntime session (default logging) on an exported graph prints nothing: no input has an
    initializer standing in as its default."""
    out = tmp_path / "cond.onnx"
    export_onnx(tiny_source(conditioned=True), out, conditioned=True, pooled_io=True)
    shipped = SHIPPED_MODEL.with_suffix(".onnx")
    script = (
        "import sys, onnxruntime as ort; ort.set_default_logger_severity(2); "
        "[ort.InferenceSession(path, providers=['CPUExecutionProvider']) for path in sys.argv[1:]]"
    )
    paths = [str(out)] + ([str(shipped)] if shipped.is_file() else [])
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, check=True)
    assert done.stdout + done.stderr == ""
    for path in paths:
        proto = onnx.load(path)
        assert not {t.name for t in proto.graph.initializer} & {i.name for i in proto.graph.input}
    if shipped.is_file():  # the shipped graph has the strength control, so every runtime does
        assert "condition" in [i.name for i in ort_session(shipped).get_inputs()]
