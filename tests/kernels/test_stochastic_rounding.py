"""Stochastic rounding keeps drawing fresh noise past 2**24 steps (issue 17, defect 7).

torch's fp32 step stops counting at 2**24 (step + 1 == step), as ours does. The kernel's noise
was keyed on that step, so from then on every step rounded the same elements up: the overlap
of rounded-up elements between consecutive steps went from ~P(round up) to 1.

Each measured step starts from the same param and moments and takes the same grad, so only the
noise decides which elements round up.
"""

from __future__ import annotations

import pytest
import torch
from devices import kernel_devices

import fused_mup
from fused_mup.launcher import KernelConfig

SATURATED = 2.0**24  # fp32: SATURATED + 1 == SATURATED
N = 1024
SMALL_TILES = KernelConfig(block=64, chunk_size=256)


def rounded_up_sets(device, backend, step, steps=4, rebuild=False):
    """The elements that rounded up, per step, from ``step`` on.

    p = 1 (bf16), maximize with grad = 1 = -m, v = 1: each step moves p up by a fixed fraction of
    a bf16 ulp (2**-7), which rounds up for that fraction of the elements."""
    p = torch.ones(N, dtype=torch.bfloat16, device=device, requires_grad=True)
    opt = fused_mup.AdamW(
        [p],
        lr=1e-3,
        weight_decay=0.0,
        maximize=True,
        bf16_update="stochastic",
        backend=backend,
        kernel_config=SMALL_TILES,
    )
    p.grad = torch.ones_like(p)
    opt.step()  # creates the state
    state = opt.state[p]
    ups = []
    for _ in range(steps):
        with torch.no_grad():
            p.fill_(1.0)
        state["exp_avg"].fill_(-1.0)  # maximize: the moments hold -grad
        state["exp_avg_sq"].fill_(1.0)
        state["step"].fill_(step)
        if rebuild:
            opt._planner.invalidate()  # a new plan, as a changing set of grads gives
        opt.step()
        up = p.detach().float() > 1.0
        assert ((p.detach().float() == 1.0) | up).all()
        ups.append(up.cpu())
        step = state["step"].item()
    return ups


def overlaps(ups):
    """|U_t ∩ U_t+1| / |U_t| for consecutive steps."""
    return [((a & b).sum() / a.sum()).item() for a, b in zip(ups, ups[1:])]


def check_fresh_noise(ups):
    rates = [u.float().mean().item() for u in ups]
    # lr / ulp = 1e-3 / 2**-7 = 0.128 at a large step (bias corrections 1); fewer at step 100.
    assert all(0.02 < r < 0.3 for r in rates), rates
    # Fresh noise: the overlap is about the round-up rate; frozen noise gives 1.0.
    assert max(overlaps(ups)) < 0.5, (overlaps(ups), rates)


@pytest.mark.parametrize("step", [100.0, SATURATED - 2.0, SATURATED], ids=["100", "2^24-2", "2^24"])
@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_noise_is_fresh_every_step(device, step):
    check_fresh_noise(rounded_up_sets(device, "triton", step))


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_noise_past_2_24_survives_plan_rebuilds(device):
    """The launch count lives on the device, not in the plan's tables: a rebuild every step
    (MoE experts without tokens) does not restart it."""
    check_fresh_noise(rounded_up_sets(device, "triton", SATURATED, rebuild=True))


def test_reference_noise_is_fresh_past_2_24():
    """The reference path draws from a seeded generator that advances every call."""
    check_fresh_noise(rounded_up_sets("cpu", "reference", SATURATED))


@pytest.mark.parametrize("device", kernel_devices())
def test_noise_below_2_24_is_keyed_on_the_step(device):
    """Below 2**24 the key is the step itself, as before: the same step gives the same noise
    (so a resumed run rounds as the uninterrupted one), whatever the launch count."""
    a = rounded_up_sets(device, "triton", 1000.0, steps=1)
    b = rounded_up_sets(device, "triton", 1000.0, steps=1)
    assert torch.equal(a[0], b[0])
