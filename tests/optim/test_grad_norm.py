"""Fused clip_grad_norm_: parity with torch.nn.utils.clip_grad_norm_, one launch, and the
GradScaler inf check folded into the same pass."""

from __future__ import annotations

import copy
import warnings
from unittest import mock

import pytest
import torch
from devices import kernel_devices
from fused_mup.kernels import adamw_kernel, grad_norm_kernel
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)
FP32 = torch.float32
BACKENDS = ["triton", "reference"]


def model_and_copy(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 33), nn.Tanh(), nn.Linear(33, 5)).to(device)
    return model, copy.deepcopy(model)


def loss_on(model, device, step, scale=1.0):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(9, 7, generator=gen).to(device)
    return model(x).square().mean() * scale


def ours(model, backend, **kw):
    groups = [
        {"params": [model[0].weight, model[2].weight], "lr_mult": 0.5},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
    ]
    return fused_mup.AdamW(groups, lr=1e-2, backend=backend, kernel_config=SMALL_TILES, **kw)


def theirs(model):
    return torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[2].weight], "lr": 5e-3},
            {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clipping", "not-clipping"])
@pytest.mark.parametrize("device", kernel_devices())
def test_clip_matches_torch_clip_then_adamw(device, max_norm, backend):
    m_ours, m_ref = model_and_copy(device)
    opt, ref = ours(m_ours, backend), theirs(m_ref)
    for step in range(8):
        for m, o in ((m_ours, opt), (m_ref, ref)):
            o.zero_grad()
            loss_on(m, device, step, scale=10.0).backward()
        grads_before = [p.grad.clone() for p in m_ours.parameters()]
        norm_ours = opt.clip_grad_norm_(max_norm)
        norm_ref = nn.utils.clip_grad_norm_(m_ref.parameters(), max_norm)
        assert_close(norm_ours, norm_ref, FP32, f"step {step}: total norm")
        for p, g in zip(m_ours.parameters(), grads_before):
            assert torch.equal(p.grad, g), "clipping is applied in the step, not to .grad"
        opt.step()
        ref.step()
    if max_norm < 1:
        assert norm_ref > 10 * max_norm, "the test must actually clip"
    for (name, a), b in zip(m_ours.named_parameters(), m_ref.parameters()):
        assert_close(a, b, FP32, f"{name} after 8 clipped steps")


@pytest.mark.parametrize("device", kernel_devices())
def test_clip_is_one_launch_and_step_one_more(device):
    m_ours, _ = model_and_copy(device)
    opt = ours(m_ours, "triton")
    loss_on(m_ours, device, 0).backward()
    calls = []
    for kernel in (grad_norm_kernel, adamw_kernel):
        real = kernel.run
        mock.patch.object(
            kernel, "run", lambda *a, _real=real, _k=kernel, **k: calls.append(_k) or _real(*a, **k)
        ).start()
    try:
        opt.clip_grad_norm_(0.1)
        opt.step()
    finally:
        mock.patch.stopall()
    assert calls == [grad_norm_kernel, adamw_kernel]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", kernel_devices())
def test_inf_first_step_changes_nothing_and_warns_nothing(device, backend):
    """An inf at step 0 (torch's test_fused_does_not_step_if_foundinf): nothing moves, the step
    stays 0, and the kernel computes no 1 / (1 - beta1**0) on the way (the interpreter's divide
    warning became an error under -W error)."""
    m_ours, _ = model_and_copy(device)
    opt = ours(m_ours, backend)
    scaler = torch.amp.GradScaler(device, init_scale=4.0)
    scaler.scale(loss_on(m_ours, device, 0)).backward()
    m_ours[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in m_ours.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.clip_grad_norm_(1.0, grad_scaler=scaler)
        scaler.step(opt)
    assert all(torch.equal(p, b) for p, b in zip(m_ours.parameters(), before))
    assert {st["step"].item() for st in opt.state.values()} == {0.0}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", kernel_devices())
def test_grad_scaler_clip_replaces_unscale_and_inf_check(device, backend):
    """opt.clip_grad_norm_(max_norm, grad_scaler=scaler) vs scaler.unscale_ + clip_grad_norm_:
    same trajectory, same norm, the inf step skipped and the scale backed off, and GradScaler's
    own unscale / inf-check pass never runs."""
    m_ours, m_ref = model_and_copy(device)
    opt, ref = ours(m_ours, backend), theirs(m_ref)
    sc_ours = torch.amp.GradScaler(device, init_scale=2.0**12, growth_interval=2)
    sc_ref = torch.amp.GradScaler(device, init_scale=2.0**12, growth_interval=2)
    real_unscale = torch.amp.GradScaler._unscale_grads_
    passes = []

    def counting_unscale(self, *args, **kwargs):
        passes.append(self)
        return real_unscale(self, *args, **kwargs)

    with mock.patch.object(torch.amp.GradScaler, "_unscale_grads_", counting_unscale):
        for step in range(7):
            for m, o, sc in ((m_ours, opt, sc_ours), (m_ref, ref, sc_ref)):
                o.zero_grad()
                sc.scale(loss_on(m, device, step, scale=10.0)).backward()
                if step == 3:
                    m[2].weight.grad[0, 0] = float("nan")
                if o is opt:
                    before = [p.detach().clone() for p in m.parameters()]
                    norm_ours = opt.clip_grad_norm_(0.05, grad_scaler=sc)
                else:
                    sc.unscale_(o)
                    norm_ref = nn.utils.clip_grad_norm_(m.parameters(), 0.05)
                sc.step(o)
                sc.update()
                if o is opt and step == 3:
                    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))
            if step == 3:
                assert not torch.isfinite(norm_ours) and not torch.isfinite(norm_ref)
            else:
                assert_close(norm_ours, norm_ref, FP32, f"step {step}: unscaled norm")
            assert sc_ours.get_scale() == sc_ref.get_scale(), f"step {step}: scale"
    assert sc_ours not in passes, "GradScaler ran its own unscale/inf-check pass"
    assert sc_ref in passes
    assert sc_ours.get_scale() < 2.0**12 * 2**3, "the inf step must back the scale off"
    for (name, a), b in zip(m_ours.named_parameters(), m_ref.parameters()):
        assert_close(a, b, FP32, f"{name} after scaled, clipped steps")
    steps = {opt.state[p]["step"].item() for p in m_ours.parameters()}
    assert steps == {6.0}, "the inf step must not count"


def test_clip_errors_are_torchs():
    m, _ = model_and_copy("cpu")
    opt = ours(m, "reference")
    loss_on(m, "cpu", 0).backward()
    with pytest.raises(NotImplementedError, match="norm_type=2.0 only"):
        opt.clip_grad_norm_(1.0, norm_type=1.0)
    m[0].weight.grad[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite, so it cannot be clipped"):
        opt.clip_grad_norm_(1.0, error_if_nonfinite=True)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="scaler.scale\\(loss\\)"):
        opt.clip_grad_norm_(1.0, grad_scaler=scaler)


@pytest.mark.parametrize("device", kernel_devices())
def test_norm_ignores_whatever_the_scratch_held(device):
    """Poison: every buffer clip_grad_norm_ allocates starts as NaN; the norm must not see it."""
    m, ref = model_and_copy(device)
    opt = ours(m, "triton")
    for model in (m, ref):
        loss_on(model, device, 0).backward()
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    with mock.patch("torch.empty", poisoned_empty):
        norm = opt.clip_grad_norm_(1.0)
    assert_close(norm, nn.utils.clip_grad_norm_(ref.parameters(), 1.0), FP32, "poisoned norm")
