"""DDP and ZeroRedundancyOptimizer on 2 ranks: fused_mup.AdamW vs torch.optim.AdamW under the
same wrapping on the same data (different data per rank), 5 steps, fp32 tolerance."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from rank_harness import Ctx, assert_check, run_ranks
from rank_models import (
    LR,
    STEPS,
    backward,
    count_launches,
    ddp,
    expect_same_params,
    fused,
    mup_groups,
)
from torch import nn

WORLD_SIZE = 2

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)


def check_ddp_parity(ctx: Ctx) -> None:
    """DDP with lr_mult groups and fused clipping vs torch's, with baked lr."""
    max_norm = 0.05
    fused_model, ref_model = ddp(ctx), ddp(ctx)
    opt = fused(mup_groups(fused_model.module, bake=False))
    ref = torch.optim.AdamW(mup_groups(ref_model.module, bake=True))
    for step in range(STEPS):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(ctx, m, step)
        norm = opt.clip_grad_norm_(max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm)
        ctx.expect_close(norm.reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        with count_launches() as calls:
            opt.step()
        ref.step()
        ctx.expect(len(calls) == 1, f"step {step}: {len(calls)} kernel launches")
        expect_same_params(ctx, fused_model, ref_model, f"step {step}")


def check_zero_parity(ctx: Ctx) -> None:
    """ZeroRedundancyOptimizer(optimizer_class=fused_mup.AdamW) vs (torch.optim.AdamW) on DDP,
    a second group added through add_param_group: each rank updates its partition in at most
    one launch, and the broadcast params match torch's."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fused_mup

    def groups(m: nn.Module, baked: bool) -> tuple[dict, dict]:
        m = m.module
        matrices = [m.embed.weight, m.hidden.weight, m.head.weight]
        vectors = [m.hidden.bias, m.norm.weight, m.norm.bias, m.head.bias]
        if baked:
            return {"params": matrices, "lr": LR * 0.5}, {"params": vectors, "lr": LR * 2.0}
        return {"params": matrices, "lr_mult": 0.5}, {"params": vectors, "lr_mult": 2.0}

    fused_model, ref_model = ddp(ctx), ddp(ctx)
    fused_groups, ref_groups = groups(fused_model, False), groups(ref_model, True)
    opt = ZeroRedundancyOptimizer(
        [fused_groups[0]], optimizer_class=fused_mup.AdamW, lr=LR, backend="triton"
    )
    ref = ZeroRedundancyOptimizer([ref_groups[0]], optimizer_class=torch.optim.AdamW, lr=LR)
    opt.add_param_group(fused_groups[1])
    ref.add_param_group(ref_groups[1])
    for step in range(STEPS):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(ctx, m, step)
        with count_launches() as calls:
            opt.step()
        ref.step()
        owns = sum(len(g["params"]) for g in opt.optim.param_groups) > 0
        ctx.expect(len(calls) == owns, f"step {step}: {len(calls)} kernel launches on this rank")
        expect_same_params(ctx, fused_model, ref_model, f"step {step}")
    ctx.expect(
        sorted(g["lr_mult"] for g in opt.param_groups) == [0.5, 2.0],
        "ZeRO must keep lr_mult in its groups",
    )


def check_zero_state_dict(ctx: Ctx) -> None:
    """ZeRO + fused_mup.AdamW: consolidate_state_dict after 3 steps, train on, then roll back
    (ZeRO's load_state_dict writes the local optimizer's state directly) and redo the steps:
    bit-identical to the first pass."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fused_mup

    m = ddp(ctx)
    opt = ZeroRedundancyOptimizer(
        m.parameters(), optimizer_class=fused_mup.AdamW, lr=LR, backend="triton"
    )

    def train(steps: range) -> list[torch.Tensor]:
        for step in steps:
            opt.zero_grad()
            backward(ctx, m, step)
            opt.step()
        return [p.detach().clone() for p in m.parameters()]

    saved_params = train(range(3))
    opt.consolidate_state_dict(to=0)
    # A copy: rank 0's state_dict() holds its live state tensors, which training mutates.
    box = [copy.deepcopy(opt.state_dict()) if ctx.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # every rank loads the whole state_dict
    first_pass = train(range(3, STEPS))
    with torch.no_grad():
        for p, saved in zip(m.parameters(), saved_params):
            p.copy_(saved)
    opt.load_state_dict(box[0])
    second_pass = train(range(3, STEPS))
    for (name, _), a, b in zip(m.named_parameters(), second_pass, first_pass):
        ctx.expect(torch.equal(a, b), f"{name} after rolling back differs from the first pass")


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "ddp_parity": check_ddp_parity,
    "zero_parity": check_zero_parity,
    "zero_state_dict": check_zero_state_dict,
}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(__name__, WORLD_SIZE, tmp_path_factory.mktemp("ddp_zero"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_ddp_zero(rank_results: list[dict], check: str) -> None:
    assert_check(rank_results, check)
