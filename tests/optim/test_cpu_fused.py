"""CPU tensors go through torch's fused CPU kernel per group; the reference path is the oracle.

Each case runs ``backend="auto"`` (the torch-fused route) and ``backend="reference"`` (the
reference path, ``fused_mup.reference.adamw_step_``) on the same grads for several steps, and
checks the route was really taken, so that the comparison is never torch against itself.
"""

from __future__ import annotations

import pytest
import torch
from tolerances import assert_close

import fused_mup

SHAPES = [(37, 19), (64,), (5, 3, 7), (1,), (0,)]
STEPS = 12


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
        for s in SHAPES
    ]


def _groups(params, lr_mult=0.5, mode="coupled"):
    return [
        {"params": params[:2], "lr_mult": lr_mult, "wd_mult": 2.0, "weight_decay_mode": mode},
        {"params": params[2:], "betas": (0.5, 0.9), "eps": 1e-6},
    ]


CASES = {
    "fp32": dict(dtype=torch.float32),
    "fp64": dict(dtype=torch.float64),
    "bf16": dict(dtype=torch.bfloat16),
    "fp16": dict(dtype=torch.float16),
    "complex64": dict(dtype=torch.complex64),
    "amsgrad": dict(dtype=torch.float32, amsgrad=True),
    "maximize": dict(dtype=torch.float32, maximize=True),
    "independent-decay": dict(dtype=torch.float32, mode="independent"),
    "lr_mult-0": dict(dtype=torch.float32, lr_mult=0.0),
    "clip": dict(dtype=torch.float32, clip=0.5),
    "transposed-grads": dict(dtype=torch.float32, transposed=True),
}


def _run(backend: str, case: dict) -> tuple[list[torch.Tensor], fused_mup.AdamW]:
    params = _params(case["dtype"])
    opt = fused_mup.AdamW(
        _groups(params, case.get("lr_mult", 0.5), case.get("mode", "coupled")),
        lr=1e-2,
        weight_decay=0.1,
        amsgrad=case.get("amsgrad", False),
        maximize=case.get("maximize", False),
        backend=backend,
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p in params:
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if case.get("transposed") and g.dim() == 2:
                g = g.t().contiguous().t()  # same values, other strides
            p.grad = g
        if "clip" in case:
            opt.clip_grad_norm_(case["clip"])
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("name", list(CASES))
def test_cpu_fused_route_matches_the_reference_path(name):
    case = CASES[name]
    got, opt = _run("auto", case)
    want, ref = _run("reference", case)
    plan = opt._planner.plan
    assert plan.cpu_fused and not plan.reference, "the torch-fused route was not taken"
    assert not ref._planner.plan.cpu_fused
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, case["dtype"], f"{name}: param {i} {tuple(a.shape)}")
    for p_a, p_b in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        assert torch.equal(opt.state[p_a]["step"], ref.state[p_b]["step"])


def test_grad_scaler_inf_step_skips_update_and_count():
    """GradScaler on CPU: an injected inf skips the whole step, its count included."""
    results = {}
    for backend in ("auto", "reference"):
        params = _params(torch.float32)
        opt = fused_mup.AdamW(_groups(params), lr=1e-2, weight_decay=0.1, backend=backend)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        for step in range(4):
            loss = sum((p.float() * (k + 1)).sum() for k, p in enumerate(params))
            scaler.scale(loss).backward()
            if step == 2:
                params[0].grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        results[backend] = ([p.detach().clone() for p in params], opt)
    (got, opt), (want, _) = results["auto"], results["reference"]
    assert opt._planner.plan.cpu_fused
    for a, b in zip(got, want):
        assert_close(a, b, torch.float32, "GradScaler")
    assert opt.state[opt.param_groups[0]["params"][0]]["step"].item() == 3.0


def test_nan_grad_norm_gives_nan_params_as_torch():
    """A NaN norm makes the clip coefficient NaN, and every param NaN, as torch's clip_grad_norm_
    followed by torch.optim.AdamW does."""
    params = _params(torch.float32)
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = fused_mup.AdamW(params, lr=1e-2)
    torch_opt = torch.optim.AdamW(ref, lr=1e-2)
    for ps in (params, ref):
        for p in ps:
            p.grad = torch.ones_like(p)
        ps[0].grad[0, 0] = float("nan")
    opt.clip_grad_norm_(1.0)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    opt.step()
    torch_opt.step()
    assert opt._planner.plan.cpu_fused
    for a, b in zip(params, ref):
        assert torch.equal(a.isnan(), b.isnan()) and (a.numel() == 0 or a.isnan().all())


def test_reference_path_keeps_what_torch_fused_cannot():
    """bf16 with fp32 states, and the kahan mode, stay on the reference path."""
    params = _params(torch.bfloat16)
    opt = fused_mup.AdamW(params[:2], state_dtype=torch.float32)
    opt.add_param_group({"params": params[2:], "bf16_update": "kahan"})
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    plan = opt._planner.plan
    assert not plan.cpu_fused and len(plan.reference) == len(params)
