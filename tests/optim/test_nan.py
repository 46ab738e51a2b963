"""NaN propagates as in torch: through the fused clip coefficient and through AMSGrad's max.

A NaN must never be dropped: ``min(1, max_norm / NaN)`` and ``max(v_max, NaN)`` are NaN in torch,
so every param the coefficient touches, or the element whose max is NaN, becomes NaN. Each
backend is checked against torch.optim.AdamW (with torch.nn.utils.clip_grad_norm_).
"""

from __future__ import annotations

import pytest
import torch
from devices import INTERPRETING

import fused_mup
from fused_mup.launcher import KernelConfig

BACKENDS = [
    pytest.param("torch", id="plain"),
    pytest.param("auto", id="auto"),  # CPU tensors: torch's fused CPU kernel per group
    pytest.param(
        "triton",
        id="kernel",
        marks=pytest.mark.skipif(not INTERPRETING, reason="CPU kernel needs TRITON_INTERPRET=1"),
    ),
]


def _pair(backend, **kw):
    torch.manual_seed(0)
    ours = [torch.randn(40), torch.randn(7, 3)]
    theirs = [p.clone() for p in ours]
    for p in ours + theirs:
        p.requires_grad_(True)
    cfg = KernelConfig(block=16, chunk_size=32)
    opt = fused_mup.AdamW(ours, lr=1e-2, backend=backend, kernel_config=cfg, **kw)
    return ours, opt, theirs, torch.optim.AdamW(theirs, lr=1e-2, **kw)


def _grads(ours, theirs, seed, nan_at=None):
    gen = torch.Generator().manual_seed(seed)
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = a.grad.clone()
    if nan_at is not None:
        ours[1].grad.view(-1)[nan_at] = float("nan")
        theirs[1].grad.view(-1)[nan_at] = float("nan")


def _assert_same_with_nans(ours, opt, theirs, ref):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-6, atol=2e-6)
        for key, value in ref.state[b].items():
            torch.testing.assert_close(
                opt.state[a][key], value, equal_nan=True, rtol=1e-6, atol=2e-6
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_grad_norm_makes_the_clipped_step_nan(backend):
    ours, opt, theirs, ref = _pair(backend)
    _grads(ours, theirs, 0)
    opt.step(), ref.step()
    _grads(ours, theirs, 1, nan_at=5)
    norm = opt.clip_grad_norm_(1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    opt.step(), ref.step()
    assert norm.isnan()
    assert ours[0].isnan().all(), "a NaN norm must reach every clipped param, not be dropped"
    _assert_same_with_nans(ours, opt, theirs, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_reaches_amsgrad_max_and_stays(backend):
    ours, opt, theirs, ref = _pair(backend, amsgrad=True)
    for step in range(4):
        _grads(ours, theirs, step, nan_at=4 if step == 1 else None)
        opt.step(), ref.step()
    vmax = opt.state[ours[1]]["max_exp_avg_sq"].view(-1)
    assert vmax[4].isnan() and not vmax[3].isnan()
    _assert_same_with_nans(ours, opt, theirs, ref)
