"""Deployable files from a checkpoint: TorchScript, ONNX and TensorRT engines, each checked against eager PyTorch.

`python -m export torchscript|onnx|tensorrt --model CKPT --out FILE` (see `export/__main__.py`). Every exporter
runs its result on an input whose size is not a multiple of the model's stride and fails above its tolerance.
`export.checks.output_problem` is the output sanity check shared with the inference runners.
"""
