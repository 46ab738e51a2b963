"""Independent weight decay follows the LR schedule, whatever sets the LR.

A weight of 1.0 with zero grads moves only by decay (Adam's update of a zero grad is zero), so
the factor ``p_t / p_(t-1)`` is ``1 - decay`` exactly. With ``weight_decay = 0.3`` and
``lr / peak_lr`` at most 1, every factor must lie in [1 - 0.3, 1] and the weight must fall
monotonically, under every scheduler torch ships that moves lr up as well as down.
"""

from __future__ import annotations

import pytest
import torch
from devices import INTERPRETING
from torch.optim import lr_scheduler

import fused_mup
from fused_mup.launcher import KernelConfig

WD = 0.3
BASE_LR = 1e-2
STEPS = 14


def _cyclic(opt):  # initial_lr is the cycle's minimum: the case that went negative
    return lr_scheduler.CyclicLR(opt, base_lr=1e-3, max_lr=1e-2, step_size_up=3)


def _warmup_cosine(opt):
    warm = lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=4)
    cos = lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS - 4)
    return lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[4])


class _ByHand:
    """Writes lr into the group as a user would: up to 3x the base, then down."""

    def __init__(self, opt):
        self.opt, self.t = opt, 0

    def step(self, *_):
        self.t += 1
        factor = [1, 3, 2, 0.5, 3, 0.1][self.t % 6]
        for group in self.opt.param_groups:
            group["lr"] = BASE_LR * factor


SCHEDULERS = {
    "CyclicLR": _cyclic,
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=BASE_LR, total_steps=STEPS + 1),
    "warmup-cosine": _warmup_cosine,
    "by-hand": _ByHand,
}
BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("auto", id="auto"),
    pytest.param(
        "triton",
        id="kernel",
        marks=pytest.mark.skipif(not INTERPRETING, reason="CPU kernel needs TRITON_INTERPRET=1"),
    ),
]


def _run(name, backend, **kw):
    p = torch.ones(4, requires_grad=True)
    opt = fused_mup.AdamW(
        [p],
        lr=torch.tensor(BASE_LR) if kw.get("capturable") else BASE_LR,
        weight_decay=WD,
        weight_decay_mode="independent",
        backend=backend,
        kernel_config=KernelConfig(block=16, chunk_size=16),
        **kw,
    )
    sched = SCHEDULERS[name](opt)
    weights, lrs = [1.0], []
    for _ in range(STEPS):
        lrs.append(float(opt.param_groups[0]["lr"]))
        p.grad = torch.zeros_like(p)
        opt.step()
        weights.append(p[0].item())
        if isinstance(sched, lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)  # a loss that never improves: lr halves every other step
        else:
            sched.step()
    return weights, lrs, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_independent_decay_stays_within_the_base_rate(name, backend):
    weights, lrs, opt = _run(name, backend)
    factors = [b / a for a, b in zip(weights, weights[1:])]
    assert all(1.0 - WD - 1e-6 <= f <= 1.0 for f in factors), (name, factors)
    assert all(b <= a for a, b in zip(weights, weights[1:])), "the weight must fall monotonically"
    assert max(lrs) > min(lrs), "the scheduler must have moved lr"
    # The decay follows lr relative to the highest lr so far (or the scheduler's peak).
    peak = opt.param_groups[0]["peak_lr"]
    assert peak == pytest.approx(max(lrs + [opt.param_groups[0].get("max_lr", 0.0)]))
    for t, (f, lr) in enumerate(zip(factors, lrs)):
        seen = max(lrs[: t + 1] + [opt.param_groups[0].get("initial_lr", 0.0)])
        seen = max(seen, opt.param_groups[0].get("max_lr", 0.0))
        assert 1.0 - f == pytest.approx(WD * lr / seen, rel=1e-5, abs=1e-7), (name, t)


def test_warmup_decay_is_relative_to_the_peak_after_warmup():
    weights, lrs, _ = _run("warmup-cosine", "reference")
    first = 1.0 - weights[1] / weights[0]
    assert first == pytest.approx(WD * 0.1, rel=1e-5), "warm-up step 0 runs at 0.1x the peak"


def test_peak_lr_set_by_the_user_is_a_floor_and_is_saved():
    p = torch.ones(4, requires_grad=True)
    opt = fused_mup.AdamW(
        [{"params": [p], "peak_lr": 4e-2}],
        lr=1e-2,
        weight_decay=WD,
        weight_decay_mode="independent",
    )
    p.grad = torch.zeros_like(p)
    opt.step()
    assert 1.0 - p[0].item() == pytest.approx(WD * 0.25, rel=1e-5)
    assert opt.state_dict()["param_groups"][0]["peak_lr"] == 4e-2


def test_weight_decay_mode_is_a_constructor_default():
    p, q = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = fused_mup.AdamW(
        [{"params": [p]}, {"params": [q], "weight_decay_mode": "coupled"}],
        weight_decay_mode="independent",
    )
    assert [g["weight_decay_mode"] for g in opt.param_groups] == ["independent", "coupled"]
    with pytest.raises(ValueError, match="independent weight decay: .* must be at most 1"):
        fused_mup.AdamW([p], weight_decay=2.0, weight_decay_mode="independent")


@pytest.mark.skipif(not INTERPRETING, reason="CPU kernel needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("name", ["CyclicLR", "warmup-cosine"])
def test_capturable_tensor_lr_decay_stays_within_the_base_rate(name):
    """capturable=True keeps the running peak as a device tensor, updated by device ops."""
    weights, lrs, opt = _run(name, "triton", capturable=True)
    factors = [b / a for a, b in zip(weights, weights[1:])]
    assert all(1.0 - WD - 1e-6 <= f <= 1.0 for f in factors), (name, factors)
    for t, (f, lr) in enumerate(zip(factors, lrs)):
        seen = max(lrs[: t + 1] + [float(opt.param_groups[0].get("initial_lr", 0.0))])
        assert 1.0 - f == pytest.approx(WD * lr / seen, rel=1e-5, abs=1e-7), (name, t)
