"""FSDP2 (``fully_shard`` on a 1-D mesh of 2 ranks): step and fused clipping vs torch.

Each check runs fused_mup.AdamW(backend="triton") and torch.optim.AdamW under the same wrapping
on the same data (different data per rank) and compares them, 5 steps, fp32 tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from rank_harness import Ctx, assert_check, full, run_ranks
from rank_models import (
    STEPS,
    backward,
    count_launches,
    counterpart,
    expect_same_params,
    fsdp,
    fused,
    model,
    mup_groups,
)
from torch import nn

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)


def check_fsdp2_parity(ctx: Ctx) -> None:
    """μP groups with lr_mult: same local shards as torch with baked lr, step by step; one
    kernel launch per step on each rank; states are DTensors."""
    fused_model, ref_model = fsdp(ctx), fsdp(ctx)
    groups = mup_groups(fused_model, bake=False)
    ctx.expect(any(g["lr_mult"] != 1.0 for g in groups), "the μP groups must carry lr_mult")
    rows = fused_model.head.weight.to_local().shape[0]
    ctx.expect(rows == (3, 2)[ctx.rank], f"head.weight: {rows} local rows; expected 3 / 2 split")
    opt = fused(groups)
    ref = torch.optim.AdamW(mup_groups(ref_model, bake=True))
    for step in range(STEPS):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(ctx, m, step)
        with count_launches() as calls:
            opt.step()
        ref.step()
        ctx.expect(len(calls) == 1, f"step {step}: {len(calls)} kernel launches on this rank")
        expect_same_params(ctx, fused_model, ref_model, f"step {step}")
    from torch.distributed.tensor import DTensor

    for p in fused_model.parameters():
        state = opt.state[p]
        ctx.expect(isinstance(state["exp_avg"], DTensor), "exp_avg must be a DTensor, as torch's")
        ctx.expect_close(
            state["exp_avg_sq"],
            ref.state[counterpart(p, fused_model, ref_model)]["exp_avg_sq"],
            "exp_avg_sq",
        )


def check_fsdp2_clip(ctx: Ctx) -> None:
    """opt.clip_grad_norm_ vs torch.nn.utils.clip_grad_norm_: same global norm (all-reduced
    over the mesh), same clipped trajectory; the grads stay unclipped."""
    max_norm = 0.05
    fused_model, ref_model = fsdp(ctx), fsdp(ctx)
    opt = fused(mup_groups(fused_model, bake=False))
    ref = torch.optim.AdamW(mup_groups(ref_model, bake=True))
    for step in range(STEPS):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(ctx, m, step)
        grads = [p.grad.to_local().clone() for p in fused_model.parameters()]
        norm = opt.clip_grad_norm_(max_norm)
        ref_norm = full(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm))
        ctx.expect_close(full(norm).reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        ctx.expect(ref_norm.item() > 2 * max_norm, f"step {step}: clipping must be active")
        ctx.expect(
            all(torch.equal(g, p.grad.to_local()) for g, p in zip(grads, fused_model.parameters())),
            "clip_grad_norm_ must leave the grads as they are",
        )
        opt.step()
        ref.step()
        expect_same_params(ctx, fused_model, ref_model, f"step {step}")


def check_presets_before_after_fully_shard(ctx: Ctx) -> None:
    """param_groups gives the same roles, multipliers and names before and after fully_shard."""

    def summary(m: nn.Module) -> list[tuple]:
        return [
            (g["role"], g["width_mult"], g["lr_mult"], g["wd_mult"], tuple(g["param_names"]))
            for g in mup_groups(m, bake=False)
        ]

    before = summary(model(ctx))
    after = summary(fsdp(ctx))
    ctx.expect(after == before, f"groups differ after fully_shard:\n{before}\n{after}")
    ctx.expect(len({row[2] for row in before}) > 1, "expected several lr_mult values")


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "fsdp2_parity": check_fsdp2_parity,
    "fsdp2_clip": check_fsdp2_clip,
    "presets_after_fully_shard": check_presets_before_after_fully_shard,
}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(__name__, WORLD_SIZE, tmp_path_factory.mktemp("fsdp2"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_fsdp2(rank_results: list[dict], check: str) -> None:
    assert_check(rank_results, check)
