"""GradScaler with fused_mup.AdamW: inf steps skipped, unscale_ then clipping, as with torch."""

from __future__ import annotations

import copy

import pytest
import torch
from devices import kernel_devices
from lifecycle_models import (
    assert_models_close,
    baked,
    batch,
    loss_fn,
    model_groups,
    ours,
    tiny_model,
    train,
)
from torch import nn

from fused_mup import launcher


@pytest.mark.parametrize("device", kernel_devices())
def test_grad_scaler_skips_inf_step_and_matches_torch(device, monkeypatch):
    seen_scales = []
    real_launch = launcher.launch

    def spy(bucket, groups, grad_scale, found_inf, config, **kwargs):
        seen_scales.append(grad_scale)
        return real_launch(bucket, groups, grad_scale, found_inf, config, **kwargs)

    monkeypatch.setattr(launcher, "launch", spy)
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(model_groups(m_ours), device, lr=1e-2)
    ref = torch.optim.AdamW(baked(model_groups(m_ref), 1e-2, 1e-2))
    sc_ours = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=3)
    sc_ref = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=3)
    train(m_ours, opt, device, 4, scaler=sc_ours)
    train(m_ref, ref, device, 4, scaler=sc_ref)

    # The inf step: nothing may change, step counts included; the scale backs off.
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in m_ours.parameters()]
    scale_before = sc_ours.get_scale()
    train(m_ours, opt, device, 1, start=4, scaler=sc_ours, inject_inf_at=(4,))
    train(m_ref, ref, device, 1, start=4, scaler=sc_ref, inject_inf_at=(4,))
    assert sc_ours.get_scale() == scale_before / 2 == sc_ref.get_scale()
    for p, old in zip(m_ours.parameters(), before[1]):
        assert torch.equal(p, old), "an inf step changed a param"
    for pid, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            assert torch.equal(value, before[0]["state"][pid][key]), f"inf step changed {key}"

    train(m_ours, opt, device, 5, start=5, scaler=sc_ours)
    train(m_ref, ref, device, 5, start=5, scaler=sc_ref)
    assert_models_close(m_ours, m_ref, "GradScaler")
    # As with torch.optim.AdamW (and so that Lightning allows gradient_clip_val), GradScaler
    # unscales the grads itself and skips the inf step; the fused route, where the kernel
    # unscales, is clip_grad_norm_(grad_scaler=...) (tests/optim/test_grad_norm.py).
    assert opt._step_supports_amp_scaling is False
    assert len(seen_scales) == 9 and all(s.item() == 1 for s in seen_scales)
    steps = {v["step"].item() for v in opt.state_dict()["state"].values()}
    assert steps == {9.0} == {v["step"].item() for v in ref.state_dict()["state"].values()}


@pytest.mark.parametrize("device", kernel_devices())
def test_grad_scaler_with_unscale_and_clip(device):
    """unscale_ first (grads arrive unscaled, grad_scale is None), clip, then step."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(m_ours.parameters(), device, lr=1e-2)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    for model, o in ((m_ours, opt), (m_ref, ref)):
        scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
        for step in range(6):
            o.zero_grad()
            scaler.scale(loss_fn(model, batch(device, step))).backward()
            scaler.unscale_(o)
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(o)
            scaler.update()
    assert_models_close(m_ours, m_ref, "unscale_ + clip")
