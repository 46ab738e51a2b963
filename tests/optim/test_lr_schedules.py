"""LR schedulers rewrite lr while lr_mult / wd_mult stay, and independent decay follows the
schedule's peak (a scheduler's initial_lr, OneCycleLR's max_lr), as torch.optim.AdamW with the
equivalent groups."""

from __future__ import annotations

import pytest
import torch
from devices import kernel_devices
from lifecycle_models import (
    assert_models_close,
    baked,
    model_groups,
    ours,
    tiny_model,
    train,
)


@pytest.mark.parametrize("device", kernel_devices())
def test_lr_scheduler_rewrites_lr_and_multipliers_stay(device):
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(model_groups(m_ours), device, lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW(baked(model_groups(m_ref), 1e-2, 0.05))
    warmup = lambda s: min(1.0, (s + 1) / 4) * 0.5 ** (s // 5)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, warmup)
    train(m_ours, opt, device, 12, scheduler=s_ours)
    train(m_ref, ref, device, 12, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "LambdaLR")
    assert [g["lr_mult"] for g in opt.param_groups] == [2.0, 0.5, 1.0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * warmup(12))


@pytest.mark.parametrize("device", kernel_devices())
def test_independent_weight_decay_is_torch_decay_divided_by_peak_lr(device):
    """independent: p *= 1 - (lr / initial_lr) * wd * wd_mult. In torch's coupled terms that is
    weight_decay = wd * wd_mult / (initial_lr * lr_mult), which we hand to torch.optim.AdamW."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    groups = model_groups(m_ours, wd=1e-3)
    for g in groups:
        g["weight_decay_mode"] = "independent"
        g["weight_decay"] = g.get("weight_decay", 2e-3)
    opt = ours(groups, device, lr=1e-2)
    ref_groups = []
    for g, p in zip(groups, model_groups(m_ref)):
        lr = 1e-2 * g["lr_mult"]
        wd = g["weight_decay"] * g["wd_mult"] / lr
        ref_groups.append({"params": p["params"], "lr": lr, "weight_decay": wd})
    ref = torch.optim.AdamW(ref_groups)
    decay = lambda s: 1.0 / (1 + s)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, decay)
    train(m_ours, opt, device, 10, scheduler=s_ours)
    train(m_ref, ref, device, 10, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "independent decay")


@pytest.mark.parametrize("device", kernel_devices())
def test_independent_decay_is_relative_to_one_cycle_max_lr(device):
    """OneCycleLR's initial_lr is the warm-up start; independent decay uses its max_lr."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(m_ours.parameters(), device, lr=1e-2, weight_decay=1e-3)
    for g in opt.param_groups:
        g["weight_decay_mode"] = "independent"
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2, weight_decay=1e-3 / 1e-2)
    s_ours = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    s_ref = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=1e-2, total_steps=10)
    train(m_ours, opt, device, 6, scheduler=s_ours)
    train(m_ref, ref, device, 6, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "independent decay under OneCycleLR")
