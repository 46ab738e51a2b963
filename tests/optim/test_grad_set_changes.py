"""A set of params with grads that changes every step (MoE experts without tokens, LayerDrop,
multi-task heads): each step equals torch.optim.AdamW's, which skips params without a grad, and
the plan is built only when a param gets its first grad, not on every change."""

from __future__ import annotations

import pytest
import torch
from devices import backend_devices
from tolerances import assert_close

import fused_mup
from fused_mup.launcher import KernelConfig
from fused_mup.optim import plan as plan_module

TILES = KernelConfig(block=16, chunk_size=32)
N_EXPERTS = 6
# Experts with tokens per step: a new one joins at steps 0, 1 and 3; from step 4 on every expert
# has stepped once, so no step may build a plan.
ROUTES = [{0, 1}, {1, 2}, {0, 2}, {3, 4, 5}, {5}, {0, 3}, set(), {1, 4}, {2, 5}, {0, 1, 2, 3, 4, 5}]


def _experts(device, dtype=torch.float32):
    torch.manual_seed(0)
    # Odd sizes: several chunks per expert under TILES, and chunk tails.
    return [
        torch.nn.Parameter(torch.randn(3 + e, 17, device=device, dtype=dtype))
        for e in range(N_EXPERTS)
    ]


def _count_builds(monkeypatch) -> list[int]:
    builds = []
    build = plan_module._build

    def counted(*args, **kwargs):
        builds.append(1)
        return build(*args, **kwargs)

    monkeypatch.setattr(plan_module, "_build", counted)
    return builds


def _run(opt, params, routes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for routed in routes:
        opt.zero_grad(set_to_none=True)
        for e, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
            if e in routed:
                p.grad = g
        opt.step()


BACKENDS = backend_devices("auto", "reference")


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_moe_routes_match_torch_and_build_no_plan_once_every_expert_stepped(
    backend, device, amsgrad, monkeypatch
):
    builds = _count_builds(monkeypatch)
    ours, theirs = _experts(device), _experts(device)
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=amsgrad)
    opt = fused_mup.AdamW(ours, backend=backend, kernel_config=TILES, **kw)
    ref = torch.optim.AdamW(theirs, **kw)
    _run(opt, ours, ROUTES[:4])
    _run(ref, theirs, ROUTES[:4])
    assert len(builds) == 3, f"a plan per new member expected (steps 0, 1, 3), got {len(builds)}"
    _run(opt, ours, ROUTES[4:], seed=2)
    _run(ref, theirs, ROUTES[4:], seed=2)
    assert len(builds) == 3, "a step whose grad set only changed built a plan"
    for e, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), b.detach(), torch.float32, what=f"expert {e}")
        sa, sb = opt.state[a], ref.state[b]
        assert sa["step"].item() == sb["step"].item(), f"expert {e}: step count"
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(sa[key], sb[key], torch.float32, what=f"expert {e} {key}")


def test_fused_clip_over_a_changing_grad_set_matches_torch():
    """The grad-norm pass must skip the members without a grad, as clip_grad_norm_ does."""
    ours, theirs = _experts("cpu"), _experts("cpu")
    opt = fused_mup.AdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    for routed in ROUTES:
        for o in (opt, ref):
            o.zero_grad(set_to_none=True)
        for e in range(N_EXPERTS):
            g = torch.randn(ours[e].shape, generator=gen)
            if e in routed:
                ours[e].grad, theirs[e].grad = g.clone(), g.clone()
        norm = opt.clip_grad_norm_(0.5)
        want = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
        assert_close(norm.reshape(()), want.reshape(()), torch.float32, what="grad norm")
        opt.step()
        ref.step()
    for e, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), b.detach(), torch.float32, what=f"expert {e}")
