"""GradScaler's optimizer protocol: torch.optim.AdamW's by default (so trainers that check
``_step_supports_amp_scaling`` allow clipping), the fused one after
``clip_grad_norm_(grad_scaler=...)``."""

from __future__ import annotations

import torch
from torch import nn

import fused_mup
from fused_mup import launcher


def test_default_protocol_is_torch_adamw_s():
    opt = fused_mup.AdamW(nn.Linear(2, 2).parameters())
    assert getattr(opt, "_step_supports_amp_scaling", False) is False
    assert (
        getattr(
            torch.optim.AdamW(nn.Linear(2, 2).parameters()), "_step_supports_amp_scaling", False
        )
        is False
    )


def test_fused_clip_hands_the_scale_to_the_step_without_a_host_read(monkeypatch):
    model = nn.Linear(4, 3)
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    seen = []
    real = launcher.launch
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: seen.append(1) or real(*a, **k))
    steps = []
    real_step = fused_mup.AdamW.step

    def spy_step(self, closure=None):
        steps.append((getattr(self, "grad_scale", "unset"), getattr(self, "found_inf", None)))
        return real_step(self, closure)

    monkeypatch.setattr(fused_mup.AdamW, "step", spy_step)
    for inject in (False, True, False):
        opt.zero_grad()
        scaler.scale(model(torch.randn(5, 4)).square().mean()).backward()
        if inject:
            model.weight.grad[0, 0] = float("inf")
        opt.clip_grad_norm_(1.0, grad_scaler=scaler)
        assert opt._step_supports_amp_scaling is True
        before = model.weight.detach().clone()
        scaler.step(opt)
        scaler.update()
        assert opt._step_supports_amp_scaling is False  # one step only
        if inject:  # stepped (the inf flag is read on the device), changed nothing
            assert torch.equal(model.weight, before)
    # GradScaler called step() every time, with its found_inf tensor and no scale (the clip
    # pass already holds it): the inf step was skipped inside the step, not by a host read.
    assert len(steps) == 3
    assert all(gs is None and torch.is_tensor(fi) for gs, fi in steps)
    assert steps[1][1].item() == 1.0
