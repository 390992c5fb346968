"""Inference: open any model file and restore images, whole or in seamless tiles.

`infer.backends.open_backend(path, device, precision, runtime)` -> a `Backend` (checkpoint, TorchScript, ONNX
through onnxruntime or OpenVINO, TensorRT; None = the shipped model on the fastest runtime here);
`infer.tiling.restore(backend, degraded, tile, overlap, condition, stats=, progress=)` with whole-image pooling
statistics for tiles (`infer.stats`); `python -m infer` restores files and folders;
`python -m infer.degrade` makes a degraded test image from a clean photo with the real libjpeg encoder;
`python -m infer.measure_tiling` measures how far tiled output is from untiled for a model.
"""
