"""The optimizer's lr / weight_decay reach groups that param_groups was not given them for."""

from __future__ import annotations

import torch
from preset_models import LlamaLike, mlp

import fused_mup
from fused_mup.presets import param_groups


def test_optimizer_lr_and_weight_decay_reach_groups() -> None:
    """The torch habit `AdamW(param_groups(model, "sp"), lr=3e-3, weight_decay=0.1)` trains at
    lr 3e-3 with decay 0.1 (vectors undecayed, the preset's documented default), step for step
    as torch.optim.AdamW given the same two groups by hand."""
    torch.manual_seed(0)
    model, theirs = mlp(16), mlp(16)
    theirs.load_state_dict(model.state_dict())
    groups = param_groups(model, "sp")
    assert all("lr" not in g and "weight_decay" not in g for g in groups)
    opt = fused_mup.AdamW(groups, lr=3e-3, weight_decay=0.1)
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(3e-3, 0.1)}
    matrices = [p for p in theirs.parameters() if p.ndim == 2]
    vectors = [p for p in theirs.parameters() if p.ndim < 2]
    ref = torch.optim.AdamW(
        [{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], lr=3e-3, weight_decay=0.1
    )
    w0 = model[0].weight.detach().clone()
    for _ in range(3):
        for a, b in zip(model.parameters(), theirs.parameters(), strict=True):
            a.grad = torch.full_like(a, 0.5)
            b.grad = torch.full_like(b, 0.5)
        opt.step()
        ref.step()
    for a, b in zip(model.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # A constant grad moves a weight by lr per step (up to eps); decay shrinks it by lr * wd.
    want = w0
    for _ in range(3):
        want = want * (1 - 3e-3 * 0.1) - 3e-3
    torch.testing.assert_close(model[0].weight.detach(), want, rtol=1e-5, atol=1e-6)


def test_optimizer_defaults_when_nothing_passed() -> None:
    """No lr / weight_decay anywhere: torch's own defaults (1e-3, 0.01), not ours."""
    opt = torch.optim.AdamW(param_groups(mlp(8), "sp"))
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-3, 1e-2)}
    fopt = fused_mup.AdamW(param_groups(mlp(8), "sp"))
    assert {(g["lr"], g["weight_decay"]) for g in fopt.param_groups} == {(1e-3, 1e-2)}


def test_explicit_group_values_win_over_optimizer_defaults() -> None:
    opt = torch.optim.AdamW(param_groups(mlp(8), "sp", lr=1e-2, weight_decay=0.0), lr=3e-3)
    assert {(g["lr"], g["weight_decay"]) for g in opt.param_groups} == {(1e-2, 0.0)}


def test_mup_groups_inherit_lr_and_keep_multipliers() -> None:
    """mup with the optimizer's lr: effective lr is still lr * lr_mult per role."""
    model = mlp(64)
    opt = torch.optim.AdamW(param_groups(model, "mup", base_model=mlp(16)), lr=4e-3)
    eff = {g["role"]: g["lr"] * g["lr_mult"] for g in opt.param_groups}
    assert eff["hidden"] == 1e-3 and eff["embedding"] == 4e-3


def test_groups_accepted_by_torch_adamw_unbaked() -> None:
    # Extra keys (lr_mult, role, param_names, ...) ride along in a torch optimizer.
    opt = torch.optim.AdamW(param_groups(LlamaLike(32), "mup", width_mult=2.0))
    assert opt.param_groups[0]["param_names"]
