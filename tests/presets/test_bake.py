"""bake=True folds the multipliers into lr / weight_decay: checked against torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch
from preset_models import LR_TABLE, GPT2Like, mlp
from torch import nn

import fused_mup
from fused_mup.presets import PRESETS, param_groups


def _one_step(model: nn.Module, groups: list[dict], steps: int = 1, sched: bool = False) -> None:
    opt = torch.optim.AdamW(groups)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t) if sched else None
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        if lr_sched:
            lr_sched.step()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_bake_coupled_matches_reference(preset: str) -> None:
    """Baked groups under torch AdamW: lr = lr·lr_mult, decay factor 1 − lr_eff·wd_eff."""
    torch.manual_seed(0)
    model = GPT2Like(32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kw = {"base_model": GPT2Like(8), "lr": 1e-2, "weight_decay": 0.1}
    plain = param_groups(model, preset, **kw)
    baked = param_groups(model, preset, bake=True, **kw)
    for g, b in zip(plain, baked, strict=True):
        assert b["lr"] == pytest.approx(g["lr"] * g["lr_mult"], rel=1e-15)
        assert b["weight_decay"] == pytest.approx(g["weight_decay"] * g["wd_mult"], rel=1e-15)
        assert (b["lr_mult"], b["wd_mult"], b["weight_decay_mode"]) == (1.0, 1.0, "coupled")
    _one_step(model, baked)
    for g in plain:
        lr_eff, wd_eff = g["lr"] * g["lr_mult"], g["weight_decay"] * g["wd_mult"]
        for n, p in zip(g["param_names"], g["params"], strict=True):
            # First Adam step with a constant gradient moves by exactly lr_eff (up to eps).
            want = before[n] * (1 - lr_eff * wd_eff) - lr_eff
            torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7)


def test_bake_independent_decay_with_scheduler() -> None:
    """Independent: p ← p·(1 − s_t·wd·wd_mult), s_t = lr_t / initial_lr, under a scheduler."""
    model = mlp(64)
    for p in model.parameters():
        nn.init.constant_(p, 1.0)
    groups = param_groups(
        model, "mup", base_model=mlp(16), lr=1e-2, weight_decay=0.1,
        weight_decay_mode="independent", decay={"vector": 1.0}, bake=True,
    )  # fmt: skip
    _one_step(model, groups, steps=3, sched=True)
    for g in groups:
        lr_eff = 1e-2 * LR_TABLE["mup"][g["role"]]
        x = 1.0
        for t in range(3):
            s_t = 0.5**t
            x = x * (1 - s_t * 0.1) - s_t * lr_eff  # decay free of lr and of m
        for p in g["params"]:
            torch.testing.assert_close(p.detach(), torch.full_like(p, x), rtol=1e-5, atol=1e-6)


def test_bake_needs_lr_and_weight_decay() -> None:
    with pytest.raises(ValueError, match="pass both"):
        param_groups(mlp(8), "sp", lr=1e-3, bake=True)
    with pytest.raises(ValueError, match="pass both"):
        param_groups(mlp(8), "sp", weight_decay=0.1, bake=True)


def test_bake_independent_lr_zero_raises() -> None:
    with pytest.raises(ValueError, match="lr=0"):
        param_groups(
            mlp(8), "sp", lr=0.0, weight_decay=0.1, weight_decay_mode="independent", bake=True
        )


@pytest.mark.parametrize("mode", ["coupled", "independent"])
def test_fused_adamw_plain_groups_match_torch_baked(mode: str) -> None:
    """fused_mup.AdamW reading lr_mult / wd_mult == torch AdamW on baked groups."""
    models = [mlp(64), mlp(64)]
    models[1].load_state_dict(models[0].state_dict())
    kw = {"base_model": mlp(16), "lr": 1e-2, "weight_decay": 0.1, "weight_decay_mode": mode}
    opts = [
        fused_mup.AdamW(param_groups(models[0], "mup", **kw)),
        torch.optim.AdamW(param_groups(models[1], "mup", bake=True, **kw)),
    ]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5**t) for o in opts]
    for _ in range(3):
        for model, opt, sched in zip(models, opts, scheds, strict=True):
            for p in model.parameters():
                p.grad = torch.full_like(p, 0.3)
            opt.step()
            sched.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
