"""The strength control: condition encoding, FiLM starting as a no-op, warm start from a blind model, conditioned
training and validation; and the unclipped AWGN share of the degradation."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_NAFNET, randomise_, tiny_config

from model import create_model, model_state, warm_start
from model.condition import condition_from_params, encode_condition
from pipeline.config import DegradeConfig
from pipeline.degrade import degrade, sample_params
from train.loop import fit


def test_encoding_of_known_withheld_and_no_jpeg():
    cond = encode_condition(3, torch.tensor([0.0, 25.0, 50.0]), torch.tensor([0, 10, 100]))
    assert torch.allclose(cond[:, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(cond[:, 2], torch.tensor([0.0, 1.0, 0.0]))  # q0 and q100 both mean no JPEG
    assert (cond[:, [1, 3]] == 1).all()
    assert (encode_condition(2) == 0).all()  # blind
    only_sigma = encode_condition(1, sigma_255=15.0)
    assert torch.allclose(only_sigma, torch.tensor([[0.3, 1.0, 0.0, 0.0]]))


def test_training_conditions_are_withheld_at_the_asked_rate():
    n = 20000
    params = {"sigma_255": torch.full((n,), 25.0), "quality": torch.full((n,), 40), "quality2": torch.zeros(n).long()}
    params["quality2"][:10] = 20
    cond = condition_from_params(params, torch.Generator().manual_seed(0), p_withheld=0.3)
    assert abs(cond[:, 1].mean().item() - 0.7) < 0.02 and abs(cond[:, 3].mean().item() - 0.7) < 0.02
    assert ((cond[:, 0] == 0) == (cond[:, 1] == 0)).all()
    assert torch.allclose(cond[:10, 2][cond[:10, 3] == 1], torch.tensor(80 / 90))  # the lower quality of two


def test_fresh_film_keeps_a_blind_models_function_and_the_condition_then_matters(tmp_path):
    blind = randomise_(create_model("nafnet", **TINY_NAFNET))
    torch.save({"model": model_state(blind), "model_name": "nafnet", "model_kwargs": TINY_NAFNET}, tmp_path / "b.pt")
    conditioned = create_model("nafnet", conditioned=True, **TINY_NAFNET)
    added = warm_start(conditioned, tmp_path / "b.pt")
    assert added and all(k.startswith("film.") for k in added)
    x = torch.rand(2, 3, 21, 30)
    told = encode_condition(2, 30.0, 20)
    with torch.no_grad():
        assert torch.allclose(conditioned(x), blind(x)) and torch.allclose(conditioned(x, told), blind(x))
        torch.nn.init.normal_(conditioned.film.mlp[-1].weight, std=0.1)
        assert torch.allclose(conditioned(x), conditioned(x, encode_condition(2)))  # None = withheld
        assert not torch.allclose(conditioned(x, told), conditioned(x))
    with pytest.raises(ValueError, match="not conditioned"):
        blind(x, told)


def test_warm_start_refuses_other_architectures(tmp_path):
    torch.save(model_state(create_model("resnet", width=8, num_blocks=2)), tmp_path / "r.pt")
    with pytest.raises(ValueError, match="do not"):
        warm_start(create_model("nafnet", conditioned=True, **TINY_NAFNET), tmp_path / "r.pt")


def test_warm_start_adds_whole_new_blocks_as_the_identity_and_refuses_half_blocks(tmp_path):
    shallow = randomise_(create_model("nafnet", **TINY_NAFNET))
    torch.save({"model": model_state(shallow), "model_name": "nafnet", "model_kwargs": TINY_NAFNET}, tmp_path / "s.pt")
    deeper = create_model("nafnet", **(TINY_NAFNET | {"enc_blocks": (2, 1), "dec_blocks": (2, 1)}))
    added = warm_start(deeper, tmp_path / "s.pt")
    assert {k.split(".")[0] + "." + k.split(".")[1] + "." + k.split(".")[2] for k in added} == {
        "encoders.0.1",
        "decoders.1.1",
    }
    x = torch.rand(2, 3, 21, 30)
    with torch.no_grad():
        torch.testing.assert_close(deeper(x), shallow(x))
    state = model_state(shallow)
    state.pop("encoders.0.0.beta")  # an old block missing part of its weights is not a new block
    torch.save(state, tmp_path / "half.pt")
    with pytest.raises(ValueError, match="do not match"):
        warm_start(create_model("nafnet", **TINY_NAFNET), tmp_path / "half.pt")


def test_unclipped_share_is_float_awgn_and_only_without_jpeg():
    cfg = DegradeConfig(p_unclipped=0.5, curriculum=False, sigma_min_255=40.0)
    params = sample_params(400, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    unclipped = params["unclipped"]
    assert unclipped.any() and not (unclipped & (params["quality"] > 0)).any()
    assert abs(unclipped[(params["sigma_255"] > 0) & (params["quality"] == 0)].float().mean().item() - 0.5) < 0.1
    clean = torch.full((400, 3, 16, 16), 0.98)
    out = degrade(clean, params, torch.Generator().manual_seed(1))
    assert out[unclipped].max() > 1 and (out[~unclipped] <= 1).all()
    assert ((out[unclipped] * 255 - (out[unclipped] * 255).round()).abs() > 1e-3).any()  # not quantised


def test_conditioned_training_reports_what_the_condition_adds(shards, tmp_path):  # noqa: F811
    cfg = tiny_config(
        "model.name=nafnet",
        "model.kwargs={width: 8, enc_blocks: [1, 1], dec_blocks: [1, 1], conditioned: true}",
        "model.p_withheld=0.5",
        "degrade.p_unclipped=0.3",
    )
    result = fit(cfg, shards, tmp_path / "run")
    assert "psnr_conditioned" in result and result["psnr_conditioned"] > 0
