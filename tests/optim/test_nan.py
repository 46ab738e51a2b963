"""NaN propagates through the fused clip coefficient and the AMSGrad maximum exactly as in torch
(torch.nn.utils.clip_grad_norm_, then torch.optim.AdamW), on every backend: the kernel, torch's
fused CPU kernel (``auto`` on CPU tensors) and the reference path.

``tl.minimum`` / ``tl.maximum`` drop a NaN operand by default (``min.f32`` on the GPU, ``fmin`` in
the interpreter); torch's ``clamp`` and ``maximum`` propagate it. A NaN grad norm must poison
every element, not turn clipping off.
"""

from __future__ import annotations

import pytest
import torch
from devices import backend_devices
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)
SIZES = [(5, 7), (70,), (3,)]  # 70: two chunks of one tensor, one of them a masked tail
BACKENDS = backend_devices("reference", "auto")  # auto on CPU: torch's fused CPU kernel


def _params(device):
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(s, device=device)) for s in SIZES]


def _grads(step, device, nan_at=None):
    gen = torch.Generator().manual_seed(step)
    grads = [torch.randn(s, generator=gen).to(device) for s in SIZES]
    if nan_at is not None:
        grads[nan_at].view(-1)[1] = float("nan")
    return grads


def _ours(params, backend, **kw):
    return fused_mup.AdamW(params, lr=1e-2, backend=backend, kernel_config=SMALL_TILES, **kw)


def _assert_same(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-6, equal_nan=True, msg=f"{what} {i}")


def _assert_states_same(opt, ours, ref, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for key, value in ref.state[b].items():
            _assert_same([opt.state[a][key]], [value], f"state {key} of param {i}:")


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_nan_grad_norm_poisons_every_param_as_torch(device, backend):
    """One NaN grad element: torch's coefficient is NaN, so every param becomes NaN."""
    ours, theirs = _params(device), _params(device)
    opt = _ours(ours, backend)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    for step in range(3):
        nan_at = 0 if step == 2 else None
        for ps, g in ((ours, _grads(step, device, nan_at)), (theirs, _grads(step, device, nan_at))):
            for p, gi in zip(ps, g):
                p.grad = gi
        opt.clip_grad_norm_(0.5)
        nn.utils.clip_grad_norm_(theirs, 0.5)
        opt.step()
        ref.step()
    assert all(torch.isnan(p).all() for p in theirs), "torch's contract this test pins"
    _assert_same(ours, theirs, "param")
    _assert_states_same(opt, ours, ref, theirs)


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_inf_grad_norm_zeroes_finite_grads_as_torch(device, backend):
    """An inf grad: the coefficient is 0, finite grads update with 0, the inf one gives NaN."""
    ours, theirs = _params(device), _params(device)
    opt = _ours(ours, backend)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    for step in range(3):
        grads = [_grads(step, device), _grads(step, device)]
        if step == 2:
            for g in grads:
                g[1].view(-1)[4] = float("inf")
        for ps, g in zip((ours, theirs), grads):
            for p, gi in zip(ps, g):
                p.grad = gi
        opt.clip_grad_norm_(0.5)
        nn.utils.clip_grad_norm_(theirs, 0.5)
        opt.step()
        ref.step()
    assert torch.isfinite(theirs[0]).all() and torch.isnan(theirs[1]).any()
    _assert_same(ours, theirs, "param")


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_amsgrad_max_keeps_nan_as_torch(device, backend):
    """A NaN grad element makes exp_avg_sq NaN there; torch.maximum keeps it in the max."""
    ours, theirs = _params(device), _params(device)
    opt = _ours(ours, backend, amsgrad=True)
    ref = torch.optim.AdamW(theirs, lr=1e-2, amsgrad=True)
    for step in range(3):
        nan_at = 1 if step == 1 else None
        for ps, g in ((ours, _grads(step, device, nan_at)), (theirs, _grads(step, device, nan_at))):
            for p, gi in zip(ps, g):
                p.grad = gi
        opt.step()
        ref.step()
    key = "max_exp_avg_sq"
    assert torch.isnan(ref.state[theirs[1]][key]).sum() == 1, "torch's contract this test pins"
    _assert_same(ours, theirs, "param")
    _assert_states_same(opt, ours, ref, theirs)
