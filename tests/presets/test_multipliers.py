"""lr_mult / wd_mult per preset and role, custom exponent tables, decay factors."""

from __future__ import annotations

import pytest
from preset_models import LR_TABLE, GPT2Like, LlamaLike, M, mlp

from fused_mup.presets import DEFAULT_DECAY, PRESETS, ROLES, param_groups


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_multipliers(preset: str, mode: str) -> None:
    groups = param_groups(
        GPT2Like(64),
        preset,
        base_model=GPT2Like(16),
        lr=3e-3,
        weight_decay=0.1,
        weight_decay_mode=mode,
        betas=(0.9, 0.95),
    )
    seen = set()
    for g in groups:
        role = g["role"]
        seen.add(role)
        want_lr = LR_TABLE[preset][role]
        assert g["lr_mult"] == pytest.approx(want_lr, rel=1e-15)
        width_wd = 1 / want_lr if mode == "coupled" else 1.0
        assert g["wd_mult"] == pytest.approx(DEFAULT_DECAY[role] * width_wd, rel=1e-15)
        assert g["lr"] == 3e-3 and g["weight_decay"] == 0.1
        assert g["weight_decay_mode"] == mode and g["preset"] == preset
        assert g["betas"] == (0.9, 0.95)
        assert len(g["params"]) == len(g["param_names"])
        if role != "vector":
            assert g["width_mult"] == M
    assert seen == set(ROLES)


def test_custom_exponent_table() -> None:
    table = {"embedding": 0.0, "hidden": -0.5, "readout": -1.0, "vector": 0.0}
    groups = param_groups(mlp(64), table, base_model=mlp(16))
    by_role = {g["role"]: g for g in groups}
    assert by_role["hidden"]["lr_mult"] == 0.5 and by_role["hidden"]["wd_mult"] == 2.0
    assert by_role["readout"]["lr_mult"] == 0.25 and by_role["readout"]["wd_mult"] == 4.0
    assert by_role["hidden"]["preset"] == "custom"


def test_decay_overrides_merge_with_defaults() -> None:
    groups = param_groups(mlp(64), "sp", width_mult=4.0, decay={"embedding": 0.0})
    wd = {g["role"]: g["wd_mult"] for g in groups}
    assert wd == {"embedding": 0.0, "vector": 0.0, "hidden": 1.0, "readout": 1.0}


def test_sp_without_width_info_is_allowed() -> None:
    groups = param_groups(LlamaLike(32), "sp")
    assert {g["lr_mult"] for g in groups} == {1.0}
