"""The shipped model's runtimes: its ONNX export stands in for the checkpoint only with the strength control, so
every runtime the fastest-first order picks has the dial."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from conftest import save_checkpoint, tiny_nafnet

import model as model_api
from infer.backends import open_backend
from model.condition import encode_condition

RUNTIMES_HERE = ["torch", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def test_shipped_onnx_stands_in_only_with_the_strength_control(tmp_path, monkeypatch):
    """A conditioned shipped checkpoint: a blind export of it is passed over, saying why; the export the command
    writes by default has the condition input, so every runtime has the strength control."""
    from export.__main__ import main as export_main
    from export.onnx import export_onnx
    from export.parity import load_source

    checkpoint = save_checkpoint(tiny_nafnet(conditioned=True), tmp_path / "shipped.pt", conditioned=True)
    monkeypatch.setattr(model_api, "SHIPPED_MODEL", checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(load_source(checkpoint), tmp_path / "shipped.onnx", pooled_io=True)  # blind
        with pytest.raises(ValueError, match="no strength control"):
            open_backend(None, device="cpu", runtime="onnxruntime")
        export_main(["onnx", "--model", str(checkpoint), "--out", str(tmp_path / "shipped.onnx")])  # the defaults
    for runtime in RUNTIMES_HERE:
        backend = open_backend(None, device="cpu", runtime=runtime)
        assert backend.conditioned and not backend.notes, (runtime, backend.notes)
        degraded = torch.rand(1, 3, 23, 30)
        told = backend(degraded, encode_condition(1, 25.0, 40.0))
        assert told.shape == degraded.shape
