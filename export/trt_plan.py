"""TensorRT build decisions that need no TensorRT: target presets, precision, version checks, profile shapes.

Kept apart from the builder so they are tested on any machine, and so a refused build is refused before
TensorRT or CUDA is even looked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "int8")
TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "int8": 0.25}  # max abs diff against eager float32, images in [0, 1]
NORM_SCOPE = re.compile(r"/norm\d*/")  # layer names the ONNX parser gives LayerNorm2d's ops (NAFBlock.norm1/2)


class PlanError(ValueError):
    """A build that must not happen (unsupported precision for the target, bad profile, wrong TensorRT)."""


@dataclass(frozen=True)
class Target:
    """A deployment GPU: what TensorRT supports on it and which precisions make sense."""

    name: str
    description: str
    compute_capability: tuple[int, int]
    max_trt_major: int | None  # the newest TensorRT major version that still supports this architecture
    fp16_refusal: str | None  # why FP16 is refused on this GPU (None: allowed)
    int8_note: str
    default_precision: str = "fp32"


TARGETS: dict[str, Target] = {
    "gtx1060": Target(
        name="gtx1060",
        description="NVIDIA GeForce GTX 1060 (Pascal GP106, SM 6.1)",
        compute_capability=(6, 1),
        max_trt_major=8,
        fp16_refusal=(
            "the GTX 1060 (Pascal GP106, SM 6.1) runs FP16 arithmetic at 1/64 of its FP32 rate: an FP16 engine "
            "would be far slower than FP32, not faster. Build fp32 (the default for this target) or int8"
        ),
        int8_note="SM 6.1 has DP4A 8-bit dot products: INT8 is the one reduced precision that is faster here",
    ),
}


def plan_precision(precision: str, target: Target | None) -> str:
    """The precision to build: `precision` itself, the target's default when it is None, or a `PlanError`."""
    if precision is None:
        return target.default_precision if target else "fp32"
    if precision not in PRECISIONS:
        raise PlanError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and target is not None and target.fp16_refusal:
        raise PlanError(f"refusing an FP16 engine for --target {target.name}: {target.fp16_refusal}")
    return precision


def check_trt_version(version: str, target: Target | None) -> list[str]:
    """Warnings about the installed TensorRT `version`; a `PlanError` when it cannot build for `target`."""
    major = int(version.split(".")[0])
    warnings = []
    if target is not None and target.max_trt_major is not None and major > target.max_trt_major:
        raise PlanError(
            f"TensorRT {version} cannot build for --target {target.name}: {target.description} is supported only "
            f"up to TensorRT {target.max_trt_major}.x (8.6 is the last release for Pascal; TensorRT 10 needs SM 7.0 "
            f"or newer, later 10.x releases SM 7.5). Install TensorRT 8.6 on the machine with that GPU"
        )
    if major < 8 or (major == 8 and int(version.split(".")[1]) < 6):
        warnings.append(f"TensorRT {version} is older than 8.6, the oldest release this builder was written for")
    if major >= 11:
        warnings.append(f"TensorRT {version} is newer than 10.x, the newest release this builder was written for")
    return warnings


def plan_typing(trt_version: str, precision: str, onnx_precision: str) -> tuple[bool, list[str]]:
    """(strongly typed?, warnings) for building `precision` from an ONNX graph computing in `onnx_precision`.

    TensorRT 8.6 only has weakly typed networks (builder flags + per-layer precision). TensorRT 10 also builds
    STRONGLY_TYPED networks, where the graph's own types decide: the reliable way to keep norms in FP32 there
    (per-layer precision did not stop an FP16 overflow on 10.0, TensorRT#3941). TensorRT 11 is strongly typed
    only and dropped implicit INT8 calibration (BuilderFlag.FP16/INT8 and int8_calibrator were removed).
    """
    major = int(trt_version.split(".")[0])
    if onnx_precision == "fp16" and precision != "fp16":
        raise PlanError(
            f"an fp16 ONNX graph computes in float16 whatever the builder is told: build {precision} "
            "engines from the fp32 export"
        )
    if major >= 11 and precision == "int8":
        raise PlanError(
            f"TensorRT {trt_version} has no implicit INT8 calibration: quantise the ONNX explicitly "
            "(Q/DQ nodes, e.g. NVIDIA Model Optimizer) or use TensorRT 8.6/10.x"
        )
    if major >= 11 and precision == "fp16" and onnx_precision != "fp16":
        raise PlanError(
            f"TensorRT {trt_version} builds only strongly typed networks: make the FP16 engine from an "
            "fp16 ONNX (python -m export onnx --fp16)"
        )
    warnings = []
    if major == 10 and precision == "fp16" and onnx_precision != "fp16":
        warnings.append(
            "TensorRT 10 may not honour per-layer FP32 pins (TensorRT#3941); an fp16 ONNX "
            "(python -m export onnx --fp16) builds a strongly typed network instead"
        )
    return major >= 11 or (major >= 10 and onnx_precision == "fp16"), warnings


def check_device(capability: tuple[int, int], target: Target | None) -> None:
    """Engines run only on the GPU architecture they were built on: refuse to build for a target elsewhere."""
    if target is not None and tuple(capability) != target.compute_capability:
        raise PlanError(
            f"this GPU is SM {capability[0]}.{capability[1]} but --target {target.name} is SM "
            f"{target.compute_capability[0]}.{target.compute_capability[1]}: a TensorRT engine only runs on the "
            "architecture it was built on, so build it on the target machine"
        )


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """`"1x3x512x512"` -> (1, 3, 512, 512)."""
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise PlanError(f"a shape is N x 3 x H x W, e.g. 1x3x512x512; got {text!r}")
    return tuple(int(part) for part in parts)  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """Optimisation profile of the `degraded` input: (N, 3, H, W) minimum, optimum, maximum."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def covers(self, shape: tuple[int, ...]) -> bool:
        return all(low <= size <= high for low, size, high in zip(self.min, shape, self.max, strict=True))


def make_profile(min_shape: tuple[int, ...], opt_shape: tuple[int, ...], max_shape: tuple[int, ...]) -> Profile:
    """Validate min <= opt <= max per dimension, 3 channels, positive sizes; returns the `Profile`."""
    shapes = {"min": tuple(min_shape), "opt": tuple(opt_shape), "max": tuple(max_shape)}
    for label, shape in shapes.items():
        if len(shape) != 4 or any(size < 1 for size in shape):
            raise PlanError(f"--{label}-shape must be four positive sizes N x 3 x H x W, got {shape}")
        if shape[1] != 3:
            raise PlanError(f"--{label}-shape must have 3 channels (RGB), got {shape[1]}")
    for dim, name in enumerate("NCHW"):
        low, mid, high = (shapes[key][dim] for key in ("min", "opt", "max"))
        if not low <= mid <= high:
            raise PlanError(f"profile dimension {name} needs min <= opt <= max, got {low}, {mid}, {high}")
    return Profile(shapes["min"], shapes["opt"], shapes["max"])


def parity_shape(profile: Profile, stride: int) -> tuple[int, int, int, int]:
    """An input inside `profile` whose height and width are, where the profile allows, not multiples of `stride`
    (67 x 93 when it fits): the size an engine's parity check runs at."""
    sizes = []
    for dim, preferred in ((2, 67), (3, 93)):
        low, high = profile.min[dim], profile.max[dim]
        size = min(max(preferred, low), high)
        if stride > 1 and size % stride == 0:
            size = size + 1 if size + 1 <= high else size - 1 if size - 1 >= low else size
        sizes.append(size)
    return (profile.min[0], 3, sizes[0], sizes[1])


def is_norm_layer(name: str) -> bool:
    """True for the layers/nodes of a LayerNorm2d, by the scope the exporter gives them."""
    return NORM_SCOPE.search(name) is not None
