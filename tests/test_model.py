"""model/: every registered model keeps shapes on odd sizes, trains, starts as the identity; LayerNorm2d; loading."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_
from torch import nn
from torch.optim.swa_utils import AveragedModel

from model import (
    MODELS,
    count_params,
    create_model,
    float32_modules,
    is_conditioned,
    load_model,
    macs_per_megapixel,
    model_state,
)
from model.blocks import LayerNorm2d
from model.condition import encode_condition

SMALL_KWARGS = {
    "nafnet": {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1, "dec_blocks": (1, 1)},
    "resnet": {"width": 8, "num_blocks": 2},
}


class NotATensor:
    """A custom class: pickling an instance makes a file that weights_only loading must refuse."""

    def __init__(self) -> None:
        self.payload = "arbitrary object"


def small_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **SMALL_KWARGS[name])


def test_small_kwargs_cover_every_model():
    assert set(SMALL_KWARGS) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 48), (1, 3, 1, 5)])
def test_forward_keeps_shape_and_dtype(name, shape, device):
    model = randomise_(small_model(name)).to(device).eval()
    degraded = torch.rand(shape, device=device)
    with torch.no_grad():
        restored = model(degraded)
    assert restored.shape == degraded.shape and restored.dtype == degraded.dtype
    assert torch.isfinite(restored).all()
    assert isinstance(model.stride, int) and model.stride >= 1


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("conditioned", [False, True])
def test_every_model_declares_whether_it_takes_a_condition(name, conditioned, device):
    """The model API's `conditioned` (asked through `is_conditioned`, wrappers included) matches what forward takes."""
    kwargs = SMALL_KWARGS[name] | ({"conditioned": True} if conditioned else {})
    if conditioned and name != "nafnet":
        pytest.skip(f"{name} has no conditioned variant")
    model = create_model(name, **kwargs).to(device).eval()
    assert is_conditioned(model) is conditioned and is_conditioned(AveragedModel(model)) is conditioned
    degraded = torch.rand(2, 3, 16, 16, device=device)
    with torch.no_grad():
        if conditioned:
            model(degraded, encode_condition(2, device=device))
        else:
            with pytest.raises((TypeError, ValueError)):  # no such argument / "this model is not conditioned"
                model(degraded, encode_condition(2, device=device))
    assert all(isinstance(m, nn.Module) for m in float32_modules(model)) and bool(float32_modules(model)) is conditioned


def test_a_model_that_does_not_declare_conditioning_is_refused():
    with pytest.raises(TypeError, match="does not declare `conditioned`"):
        is_conditioned(nn.Conv2d(3, 3, 3))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_untrained_model_is_the_identity(name, device):
    """The output conv starts at zero, so a fresh model returns its input exactly (any size, padding included)."""
    model = small_model(name).to(device)
    degraded = torch.rand(2, 3, 37, 53, device=device)
    with torch.no_grad():
        assert torch.equal(model(degraded), degraded)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backward_reaches_every_parameter(name, device):
    fresh = small_model(name).to(device)
    F.l1_loss(fresh(torch.rand(2, 3, 37, 53, device=device)), torch.rand(2, 3, 37, 53, device=device)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fresh.parameters())

    model = randomise_(small_model(name)).to(device)
    F.l1_loss(model(torch.rand(2, 3, 37, 53, device=device)), torch.rand(2, 3, 37, 53, device=device)).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} gets no gradient"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_autocast_forward_stays_close_to_float32(name, device):
    model = randomise_(small_model(name)).to(device).eval()
    degraded = torch.rand(1, 3, 37, 53, device=device)
    with torch.no_grad():
        reference = model(degraded)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            restored = model(degraded)
    assert restored.shape == degraded.shape and torch.isfinite(restored).all()
    torch.testing.assert_close(restored.float(), reference, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_layernorm2d_matches_layer_norm_over_channels(dtype):
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = (3 + 5 * torch.randn(2, 6, 5, 7)).to(dtype)
    reference = F.layer_norm(x.float().permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=norm.eps)
    out = norm(x)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), reference.permute(0, 3, 1, 2), atol=tolerance, rtol=tolerance)


def test_layernorm2d_statistics_do_not_overflow_in_half():
    """Values whose squares overflow float16 (> 65504) still normalise to finite numbers."""
    x = torch.tensor([[[[-600.0]], [[0.0]], [[600.0]]]], dtype=torch.float16)
    out = LayerNorm2d(3)(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float().flatten(), torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-2, rtol=0)


def assert_same_weights(loaded: nn.Module, state: dict[str, torch.Tensor]) -> None:
    assert not loaded.training
    loaded_state = loaded.state_dict()
    assert loaded_state.keys() == state.keys()
    assert all(torch.equal(loaded_state[key], state[key]) for key in state)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("with_ema", [False, True])
def test_load_model_rebuilds_from_our_checkpoint(name, with_ema, tmp_path):
    model = randomise_(small_model(name), seed=1)
    ema = randomise_(small_model(name), seed=2)
    checkpoint = {
        "model": model_state(model),
        "model_name": name,
        "model_kwargs": SMALL_KWARGS[name],
        "ema": model_state(ema) if with_ema else None,
        "step": 10,
        "config": {"model": {"name": name}},
    }
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    expected = ema if with_ema else model
    assert_same_weights(load_model(tmp_path / "ckpt.pt"), expected.state_dict())
    assert_same_weights(load_model(tmp_path / "ckpt.pt", use_ema=False), model.state_dict())


def test_load_model_reads_basicsr_and_bare_state_dicts(tmp_path):
    params, params_ema = randomise_(small_model("nafnet"), 1), randomise_(small_model("nafnet"), 2)
    torch.save({"params": params.state_dict(), "params_ema": params_ema.state_dict()}, tmp_path / "bsr.pth")
    torch.save(params.state_dict(), tmp_path / "bare.pth")
    spec = {"name": "nafnet", "kwargs": SMALL_KWARGS["nafnet"]}
    assert_same_weights(load_model(tmp_path / "bsr.pth", **spec), params_ema.state_dict())
    assert_same_weights(load_model(tmp_path / "bsr.pth", use_ema=False, **spec), params.state_dict())
    assert_same_weights(load_model(tmp_path / "bare.pth", **spec), params.state_dict())
    with pytest.raises(ValueError, match="pass name="):
        load_model(tmp_path / "bare.pth")


def test_load_model_strips_wrapper_prefixes(tmp_path):
    model = randomise_(small_model("resnet"))
    state = model.state_dict()
    torch.save({f"_orig_mod.module.{key}": value for key, value in state.items()}, tmp_path / "ddp_compiled.pth")
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "ddp.pth")
    torch.save({f"_orig_mod.{key}": value for key, value in state.items()}, tmp_path / "compiled.pth")
    for file in ["ddp_compiled.pth", "ddp.pth", "compiled.pth"]:
        assert_same_weights(load_model(tmp_path / file, name="resnet", kwargs=SMALL_KWARGS["resnet"]), state)


def test_model_state_unwraps_wrappers(tmp_path):
    model = randomise_(small_model("resnet"))
    fake_compiled = nn.Module()
    fake_compiled._orig_mod = nn.DataParallel(model)  # what torch.compile(DataParallel(model)) holds
    assert model_state(fake_compiled).keys() == model.state_dict().keys()
    ema = AveragedModel(model)
    assert "n_averaged" in ema.state_dict() and model_state(ema).keys() == model.state_dict().keys()
    checkpoint = {"model": model_state(model), "model_name": "resnet", "model_kwargs": SMALL_KWARGS["resnet"]}
    checkpoint["ema"] = ema.state_dict()  # raw AveragedModel keys: `module.` prefixes and `n_averaged`
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    assert_same_weights(load_model(tmp_path / "ckpt.pt"), model.state_dict())


def test_load_model_is_strict_and_names_offenders(tmp_path):
    state = small_model("resnet").state_dict()
    missing = collections.OrderedDict(list(state.items())[1:])
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="1 missing.*head.weight"):
        load_model(tmp_path / "missing.pth", name="resnet", kwargs=SMALL_KWARGS["resnet"])
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="1 unexpected.*extra.weight"):
        load_model(tmp_path / "extra.pth", name="resnet", kwargs=SMALL_KWARGS["resnet"])
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "extra.pth", name="resnet", kwargs={"width": 4, "num_blocks": 2})


def test_load_model_refuses_arbitrary_objects(tmp_path):
    checkpoint = {"model": small_model("resnet").state_dict(), "model_name": "resnet", "hook": NotATensor()}
    torch.save(checkpoint, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="refusing to unpickle") as caught:
        load_model(tmp_path / "unsafe.pt")
    assert "will likely succeed" not in str(caught.value)  # torch's advice to load it unsafely is not repeated


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="nafnet, resnet"):
        create_model("unet9000")


def test_count_params_and_macs_are_plausible():
    resnet = create_model("resnet", width=8, num_blocks=2)
    conv_weights = 3 * 8 * 9 + 2 * 2 * 8 * 8 * 9 + 8 * 3 * 9  # head, two blocks of two convs, tail
    conv_biases = 8 + 2 * 2 * 8 + 3
    assert count_params(resnet) == conv_weights + conv_biases
    assert macs_per_megapixel(resnet) == pytest.approx(conv_weights * 1e6, rel=1e-6)
    nafnet = create_model("nafnet")
    assert 1.0e6 < count_params(nafnet) < 1.3e6  # ~1.14M for the default
    assert 5e9 < macs_per_megapixel(nafnet) < 50e9
    assert nafnet.training  # measuring leaves the mode as it was


def test_slim_keeps_the_ema_weights_and_drops_the_rest(tmp_path):
    from model.slim import slim

    model, ema = create_model("resnet", width=8, num_blocks=2), create_model("resnet", width=8, num_blocks=2)
    with torch.no_grad():
        for p in ema.parameters():
            p.normal_()
    kwargs = {"width": 8, "num_blocks": 2}
    full = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "model_name": "resnet",
        "model_kwargs": kwargs,
        "optimizer": {"state": {}},
        "step": 7,
        "config": {},
    }
    torch.save(full, tmp_path / "full.pt")
    slim(tmp_path / "full.pt", tmp_path / "slim.pt")
    slim(tmp_path / "full.pt", tmp_path / "half.pt", fp16=True)
    x = torch.rand(1, 3, 17, 23)
    expected = ema.eval()(x)
    assert torch.equal(load_model(tmp_path / "slim.pt")(x), expected)
    half = load_model(tmp_path / "half.pt")(x)
    assert (half - expected).abs().max() <= 1e-2 * expected.abs().max()  # fp16 weights: ~3 significant digits
    assert "optimizer" not in torch.load(tmp_path / "slim.pt", weights_only=True)
