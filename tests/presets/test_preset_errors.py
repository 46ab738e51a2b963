"""param_groups / param_roles refuse bad arguments and unclassifiable params by name."""

from __future__ import annotations

import pytest
import torch
from preset_models import GPT2Like, LlamaLike, RawParam, mlp, roles_of
from torch import nn

import fused_mup
from fused_mup.presets import param_groups, param_roles


def test_ambiguous_raw_parameter_names_it() -> None:
    with pytest.raises(ValueError, match=r"'w_qkv'.*RawParam.*overrides"):
        param_groups(RawParam(64), "mup", width_mult=4.0)
    # A base model or an override resolves it.
    assert roles_of(param_groups(RawParam(64), "mup", base_model=RawParam(16)))["w_qkv"] == "hidden"
    groups = param_groups(RawParam(64), "mup", width_mult=4.0, overrides={"w_qkv": "hidden"})
    assert roles_of(groups)["w_qkv"] == "hidden"


def test_ambiguous_single_linear() -> None:
    with pytest.raises(ValueError, match=r"'weight'.*Linear"):
        param_groups(nn.Linear(8, 8), "mup", width_mult=2.0)


def test_ambiguous_width_dim_in_kernel() -> None:
    class K(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 4, k))

    with pytest.raises(ValueError, match=r"'w'"):
        param_roles(K(8), base_model=K(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "nope", "width_mult": 2.0}, "unknown preset"),
        ({"preset": "mup"}, "base_model= or width_mult="),
        ({"preset": {"hidden": -1.0}, "width_mult": 2.0}, "exactly the roles"),
        ({"width_mult": 2.0, "weight_decay_mode": "decoupled"}, "weight_decay_mode"),
        ({"width_mult": 2.0, "decay": {"bias": 0.0}}, "unknown roles"),
        ({"width_mult": 2.0, "overrides": {"nothing.*": "hidden"}}, "matched no parameter"),
        ({"width_mult": 2.0, "overrides": {"0.weight": "input"}}, "role must be"),
        ({"width_mult": 2.0, "base_model": mlp(8)}, "not both"),
        ({"width_mult": 2.0, "tied": "both"}, "tied must be"),
    ],
    ids=[
        "unknown-preset",
        "no-width-info",
        "partial-table",
        "bad-mode",
        "bad-decay-role",
        "unmatched-override",
        "bad-override-role",
        "base-and-scalar",
        "bad-tied-policy",
    ],
)
def test_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        param_groups(mlp(16), **kwargs)


def test_base_model_name_mismatch() -> None:
    with pytest.raises(ValueError, match="missing"):
        param_groups(GPT2Like(32), "mup", base_model=LlamaLike(16))


# Likely mistakes that used to fail deep inside (AttributeError on a generator, '<=' between a
# float and a str): each error names the argument and says what to pass.
ARGUMENT_TYPE_ERRORS = {
    "parameters-not-module": (
        lambda m: param_groups(m.parameters(), "sp"),
        TypeError,
        "param_groups: model must be an nn.Module, got generator; pass the model itself, e.g. "
        "param_groups(model, ...): roles come from module types and parameter names, which "
        "model.parameters() does not carry",
    ),
    "create-optimizer-parameters": (
        lambda m: fused_mup.create_optimizer(m.parameters()),
        TypeError,
        "create_optimizer: model must be an nn.Module, got generator; pass the model itself, "
        "e.g. create_optimizer(model, ...): roles come from module types and parameter names, "
        "which model.parameters() does not carry",
    ),
    "param-roles-named-parameters": (
        lambda m: param_roles(list(m.named_parameters()), width_mult=2.0),
        TypeError,
        "param_roles: model must be an nn.Module, got list",
    ),
    "base-shapes-file": (
        lambda m: param_groups(m, "mup", base_model="base_shapes.bsh"),
        TypeError,
        "param_groups: base_model must be an nn.Module, got str; pass a smaller instance of the "
        "same architecture (it may live on the meta device); mup's base-shape dicts and .bsh "
        "files are not read",
    ),
    "delta-shapes-dict": (
        lambda m: param_groups(m, "mup", base_model=mlp(8), delta_model={"0.weight": (8, 10)}),
        TypeError,
        "param_groups: delta_model must be an nn.Module, got dict",
    ),
    "preset-typo": (
        lambda m: param_groups(m, "muP", width_mult=2.0),
        ValueError,
        "unknown preset 'muP'; did you mean 'mup'? presets: ['mup', 'mup_lr', 'sp', 'sp_emb', "
        "'sp_emb_sqrt']",
    ),
    "preset-not-a-name": (
        lambda m: param_groups(m, 2),
        TypeError,
        "preset must be a preset name (['mup', 'mup_lr', 'sp', 'sp_emb', 'sp_emb_sqrt']) or a "
        "{role: exponent} table, got int",
    ),
    "width-mult-zero": (
        lambda m: param_groups(m, "mup", width_mult=0),
        ValueError,
        "Invalid width_mult value: 0; it is the model's width over the base width, so it must "
        "be positive and finite",
    ),
    "width-mult-string": (
        lambda m: param_groups(m, "mup", width_mult="4"),
        TypeError,
        "Invalid width_mult value: '4'; expected a number (the model's width over the base "
        "width, e.g. width_mult=4.0), got str",
    ),
    "lr-string": (
        lambda m: param_groups(m, "sp", lr="1e-3"),
        TypeError,
        "Invalid lr value: '1e-3'; expected a number, got str",
    ),
    "decay-string": (
        lambda m: param_groups(m, "sp", decay={"vector": "0"}),
        TypeError,
        "Invalid decay['vector'] value: '0'; expected a number, got str",
    ),
    "overrides-list": (
        lambda m: param_groups(m, "sp", overrides=["0.weight"]),
        TypeError,
        "overrides must be a mapping {glob pattern: role}, e.g. "
        "overrides={'*.in_proj_weight': 'hidden'}, got list",
    ),
}


@pytest.mark.parametrize(
    "case", list(ARGUMENT_TYPE_ERRORS.values()), ids=list(ARGUMENT_TYPE_ERRORS)
)
def test_argument_mistakes_name_the_argument(case) -> None:
    call, exc_type, message = case
    with pytest.raises(exc_type) as err:
        call(mlp(16))
    assert type(err.value) is exc_type
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("bad", [-2.0, float("inf"), float("nan")])
def test_width_mult_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="Invalid width_mult value"):
        param_roles(mlp(16), width_mult=bad)
