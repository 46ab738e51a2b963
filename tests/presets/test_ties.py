"""Tied embedding / readout tensors: when a policy is needed, and what mup_init_ does with them."""

from __future__ import annotations

import pytest
from preset_models import GPT2Like, roles_of

from fused_mup.presets import mup_init_, param_groups, param_roles


@pytest.mark.parametrize("preset", ["mup_lr", "sp_emb", "sp_emb_sqrt"])
def test_tied_raises_naming_both_where_the_role_matters(preset: str) -> None:
    with pytest.raises(ValueError, match=r"tied.*'wte\.weight'.*'lm_head\.weight'.*" + preset):
        param_groups(GPT2Like(64, tied=True), preset, base_model=GPT2Like(16, tied=True))
    with pytest.raises(ValueError, match=r"'wte\.weight'.*'lm_head\.weight'"):
        param_groups(GPT2Like(64, tied=True), preset, width_mult=4.0)
    # param_roles knows no preset: a tie always needs a policy there.
    with pytest.raises(ValueError, match=r"'wte\.weight'.*'lm_head\.weight'"):
        param_roles(GPT2Like(64, tied=True), width_mult=4.0)


@pytest.mark.parametrize("preset", ["sp", "mup"])
def test_tied_needs_no_policy_where_the_role_does_not_matter(preset: str) -> None:
    """sp and mup give embedding and readout the same lr_mult and decay: the tie is the
    embedding (mup's MuSharedReadout), so mup_init_ never zeroes it."""
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, preset, base_model=GPT2Like(16, tied=True))
    assert roles_of(groups)["wte.weight"] == "embedding"
    assert groups == param_groups(
        model, preset, base_model=GPT2Like(16, tied=True), tied="embedding"
    )
    g = next(g for g in groups if "wte.weight" in g["param_names"])
    assert g["tied_names"] == {"wte.weight": ["lm_head.weight"]}
    mup_init_(groups, zero_readout=True)
    assert model.wte.weight.abs().sum() > 0
    # A decay that tells the roles apart makes the choice matter again.
    with pytest.raises(ValueError, match="tied="):
        param_groups(model, preset, width_mult=4.0, decay={"readout": 0.0})


def test_zero_readout_refuses_to_zero_a_tied_embedding() -> None:
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, "mup", base_model=GPT2Like(16, tied=True), tied="readout")
    with pytest.raises(ValueError, match=r"zero_readout=True would zero 'wte\.weight'.*lm_head"):
        mup_init_(groups, zero_readout=True)
    assert model.wte.weight.abs().sum() > 0
    mup_init_(groups, zero_readout=False)  # the non-destructive init is fine


@pytest.mark.parametrize("policy", ["embedding", "readout"])
def test_tied_with_policy(policy: str) -> None:
    model = GPT2Like(64, tied=True)
    groups = param_groups(model, "mup_lr", base_model=GPT2Like(16, tied=True), tied=policy)
    roles = roles_of(groups)
    assert roles["wte.weight"] == policy and "lm_head.weight" not in roles
    g = next(g for g in groups if "wte.weight" in g["param_names"])
    assert g["lr_mult"] == (1.0 if policy == "embedding" else 0.25)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
