"""fp32 parity of the kernel's bias corrections with torch.optim.AdamW over long runs: beta2 up to
0.99999, from step 1 and from a checkpoint resumed at step 1e5, GradScaler-skipped steps not
counted.

torch's default (non-capturable) path computes ``lr / (1 - beta1**step)`` and
``sqrt(1 - beta2**step)`` from the host step in fp64 and hands them to fp32 kernels; ours computes
them on the device as ``1 - exp(step * log(beta))`` in fp64. Two tests:

- every step of 1..1,200 and 1e5+1..1e5+1,200, for three beta pairs: the kernel's own helper
  (``_step_scalars``, run over all steps in one interpreter program) against torch's host
  formula, rounded to fp32 as torch's kernels take them: at most 1 ulp apart;
- whole trajectories through the kernel against torch.optim.AdamW with GradScaler: 1,200 steps
  on CUDA; 20 on the CPU interpreter (about 0.1-0.3 s per program there), from step 0 and
  from step 1e5, within the fp32 tolerance (1e-6 relative RMS);
- 1,000 steps of one small tensor through the kernel (CPU interpreter too), checked every 250.
"""

from __future__ import annotations

import math

import pytest
import torch
from devices import INTERPRETING, kernel_devices
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig

triton = pytest.importorskip("triton", reason="the kernel's own scalar helper needs triton")
tl = triton.language
from fused_mup.kernels.adamw import _step_scalars  # noqa: E402  (needs triton)

RESUMED_AT = 100_000
BETAS = [(0.9, 0.999), (0.5, 0.9999), (0.95, 0.99999)]
FP32 = torch.float32


@triton.jit
def _scalars_kernel(step_ptr, hyper_ptr, out_ptr, n, N: tl.constexpr):
    idx = tl.arange(0, N)
    step = tl.load(step_ptr + idx, mask=idx < n, other=1.0)
    neg_step_size, bc2_sqrt = _step_scalars(
        step, tl.load(hyper_ptr), tl.load(hyper_ptr + 1), tl.load(hyper_ptr + 2)
    )
    tl.store(out_ptr + idx, neg_step_size, mask=idx < n)
    tl.store(out_ptr + n + idx, bc2_sqrt, mask=idx < n)


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in fp32 units in the last place (same-sign values)."""
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


@pytest.mark.parametrize("betas", BETAS, ids=lambda b: f"b1={b[0]}-b2={b[1]}")
@pytest.mark.skipif(not INTERPRETING and not torch.cuda.is_available(), reason="no kernel")
def test_step_scalars_match_torch_host_math_for_every_step(betas):
    device = "cpu" if INTERPRETING else "cuda"
    lr = 1e-3
    beta1, beta2 = betas
    steps = [float(t) for t in range(1, 1201)] + [float(RESUMED_AT + t) for t in range(1, 1201)]
    n = len(steps)
    hyper = torch.tensor([lr, math.log(beta1), math.log(beta2)], dtype=torch.float64)
    out = torch.full((2 * n,), float("nan"), device=device)  # poisoned
    _scalars_kernel[(1,)](torch.tensor(steps, device=device), hyper.to(device), out, n, N=4096)
    # torch.optim.AdamW's single-tensor / foreach path: Python floats, then fp32 kernel scalars.
    want = torch.tensor(
        [-lr / (1 - beta1**t) for t in steps] + [math.sqrt(1 - beta2**t) for t in steps],
        dtype=torch.float64,
    ).to(FP32)
    ulps = _ulps(out.cpu(), want)
    assert ulps.max().item() <= 1, f"worst {ulps.max().item()} ulp at {ulps.argmax().item()}"
    assert (ulps == 0).float().mean().item() >= 0.99, "most steps must round identically"


def _params(device):
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(n, device=device)) for n in (37, 37, 5)]


def _groups(params):
    return [
        {"params": params[:2], "betas": BETAS[0]},
        {"params": params[2:], "betas": BETAS[1], "weight_decay": 0.0},
    ]


def _checkpoint(params):
    """torch's state at step 1e5 for params 1 and 2 (param 0 starts fresh)."""
    gen = torch.Generator().manual_seed(1)
    ref = torch.optim.AdamW(_groups(params), lr=1e-3)
    for p in params[1:]:
        ref.state[p] = {
            "step": torch.tensor(float(RESUMED_AT)),
            "exp_avg": (torch.randn(p.shape, generator=gen) * 1e-2).to(p.device),
            "exp_avg_sq": (torch.rand(p.shape, generator=gen) * 1e-4).to(p.device),
        }
    return ref.state_dict()


@pytest.mark.parametrize("device", kernel_devices())
def test_trajectory_matches_torch_from_step_0_and_from_a_resumed_checkpoint(device):
    steps = 20 if device == "cpu" else 1200
    skipped = {3, 11} if device == "cpu" else {5, 400, 1100}  # an inf grad: GradScaler skips
    ours, theirs = _params(device), _params(device)
    config = KernelConfig(block=32, chunk_size=64)
    opt = fused_mup.AdamW(_groups(ours), lr=1e-3, backend="triton", kernel_config=config)
    ref = torch.optim.AdamW(_groups(theirs), lr=1e-3)
    opt.load_state_dict(_checkpoint(ours))
    ref.load_state_dict(_checkpoint(theirs))
    scalers = [torch.amp.GradScaler(device, init_scale=256.0, growth_interval=10**9) for _ in "ab"]
    for s in scalers:
        s.scale(torch.ones((), device=device))  # sets up the scale without a loss
    gen = torch.Generator().manual_seed(2)
    for step in range(steps):
        grads = [torch.randn(p.shape, generator=gen).to(device) for p in ours]
        if step in skipped:
            grads[step % len(grads)][0] = float("inf")
        for params, o, scaler in ((ours, opt, scalers[0]), (theirs, ref, scalers[1])):
            for p, g in zip(params, grads):
                p.grad = g * scaler.get_scale()
            scaler.step(o)
            scaler.update()
    counted = steps - len(skipped)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        start = RESUMED_AT if i else 0
        assert opt.state[a]["step"].item() == ref.state[b]["step"].item() == start + counted
        assert_close(a, b, FP32, f"param {i} after {steps} steps from step {start}")
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(opt.state[a][key], ref.state[b][key], FP32, f"param {i} {key}")


@pytest.mark.parametrize("device", kernel_devices())
def test_one_thousand_steps_through_the_kernel_stay_within_fp32_tolerance(device):
    """1,000 steps of the kernel (the interpreter on CPU: one small program per step, ~30 s)
    against torch.optim.AdamW with beta2 = 0.999, checked every 250 steps, so that error
    accumulated over a long run, not only each step's scalars, stays inside the fp32 budget."""
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(96, generator=gen).to(device)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    config = KernelConfig(block=32, chunk_size=128)
    opt = fused_mup.AdamW([ours], lr=1e-3, weight_decay=0.1, backend="triton", kernel_config=config)
    ref = torch.optim.AdamW([theirs], lr=1e-3, weight_decay=0.1)
    for step in range(1, 1001):
        g = torch.randn(96, generator=gen).to(device)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        if step % 250 == 0:
            assert_close(ours.detach(), theirs.detach(), FP32, f"param after {step} steps")
            for key in ("exp_avg", "exp_avg_sq"):
                assert_close(opt.state[ours][key], ref.state[theirs][key], FP32, f"{key} @ {step}")
