"""param_groups / param_roles refuse bad arguments and unclassifiable params by name."""

from __future__ import annotations

import pytest
import torch
from preset_models import GPT2Like, LlamaLike, RawParam, mlp, roles_of
from torch import nn

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
