"""Distributed checkpoints (DCP) with FSDP2 on 2 ranks: resume, empty per-param states, and
checkpoints that cross optimizer classes both ways (``fused_mup.dcp.LoadPlanner``).

Every check compares against torch.optim.AdamW on the same run: the uninterrupted run of the
other optimizer class, or torch doing the same save / load.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from rank_harness import Ctx, assert_check, run_ranks
from rank_models import LR, STEPS, WEIGHT_DECAY, backward, fsdp, fused, mup_groups
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

WORLD_SIZE = 2
SAVE_AT = 3
FORMATS = {"nested": False, "flattened": True}  # get_state_dict's flatten_optimizer_state_dict

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)


def _train(ctx: Ctx, m: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        backward(ctx, m, step)
        opt.step()


def _options(flatten: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=flatten)


def _save(ctx: Ctx, m: nn.Module, opt: torch.optim.Optimizer, name: str, flatten: bool):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(m, opt, options=_options(flatten))
    path = ctx.tmp / name
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    return path


def _load(m: nn.Module, opt: torch.optim.Optimizer, path, flatten: bool, planner=None) -> None:
    """The documented resume: templates from the live objects, dcp.load, set_state_dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    with torch.no_grad():  # make sure the load, not the seed, sets the weights
        for p in m.parameters():
            p.zero_()
    model_sd, optim_sd = get_state_dict(m, opt, options=_options(flatten))
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path, planner=planner)
    set_state_dict(
        m,
        opt,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_options(flatten),
    )


def _expect_params(ctx: Ctx, a: nn.Module, b: nn.Module, what: str, exact: bool) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if exact:
            ctx.expect(torch.equal(p.to_local(), q.to_local()), f"{what}: {name} differs")
        else:
            ctx.expect_close(p, q, f"{what}: {name}")


def check_dcp_round_trip(ctx: Ctx) -> None:
    """fused → fused: save model and optimizer after 3 steps, load into a fresh model and
    optimizer, continue: bit-identical to the uninterrupted run, lr_mult from the checkpoint.
    torch.optim.AdamW with baked groups takes the same path to the same params."""
    ref = fsdp(ctx)
    ref_opt = torch.optim.AdamW(mup_groups(ref, bake=True))
    _train(ctx, ref, ref_opt, range(STEPS))
    for name, flatten in FORMATS.items():
        straight = fsdp(ctx)
        straight_opt = fused(mup_groups(straight, bake=False))
        _train(ctx, straight, straight_opt, range(STEPS))
        _expect_params(ctx, straight, ref, f"{name}: vs torch", exact=False)

        first = fsdp(ctx)
        first_opt = fused(mup_groups(first, bake=False))
        _train(ctx, first, first_opt, range(SAVE_AT))
        path = _save(ctx, first, first_opt, f"round_trip_{name}", flatten)
        resumed = fsdp(ctx)
        groups = mup_groups(resumed, bake=False)
        lr_mults = [g["lr_mult"] for g in groups]
        for g in groups:  # the checkpoint must bring these back
            g["lr_mult"] = 1.0
        resumed_opt = fused(groups)
        _load(resumed, resumed_opt, path, flatten)
        ctx.expect(
            [g["lr_mult"] for g in resumed_opt.param_groups] == lr_mults,
            f"{name}: lr_mult must come back from the checkpoint",
        )
        _train(ctx, resumed, resumed_opt, range(SAVE_AT, STEPS))
        _expect_params(ctx, resumed, straight, f"{name}: resumed", exact=True)
        for p, q in zip(resumed.parameters(), straight.parameters()):
            for key in ("exp_avg", "exp_avg_sq"):
                a, b = resumed_opt.state[p][key], straight_opt.state[q][key]
                ctx.expect(torch.equal(a.to_local(), b.to_local()), f"{name}: resumed {key}")
            ctx.expect(float(resumed_opt.state[p]["step"]) == STEPS, f"{name}: step count")


def check_flattened_empty_state(ctx: Ctx) -> None:
    """A param that never gets a grad: get_optimizer_state_dict(flatten=True) gives it an
    empty state; set_optimizer_state_dict in place and load_state_dict then work (they raised
    KeyError: 'step'), and training goes on as torch's does through the same calls. (copy and
    pickle: tests/optim/test_distributed_empty_state.py; FSDP2's params do not pickle.)"""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = _options(True)
    runs = {}
    for cls in ("torch", "fused"):
        m = fsdp(ctx, unused=True)
        opt = (
            torch.optim.AdamW(mup_groups(m, bake=True))
            if cls == "torch"
            else fused(mup_groups(m, bake=False))
        )
        _train(ctx, m, opt, range(SAVE_AT))
        osd = get_optimizer_state_dict(m, opt, options=options)
        ctx.expect(len(opt.state[m.unused.weight]) == 0, f"{cls}: unused.weight's state")
        try:
            set_optimizer_state_dict(m, opt, optim_state_dict=osd, options=options)
            opt.load_state_dict(opt.state_dict())
        except Exception as e:  # a rank that raised here would leave its peer hanging
            ctx.failures.append(f"{cls}: {type(e).__name__}: {e}")
            return
        _train(ctx, m, opt, range(SAVE_AT, STEPS))
        runs[cls] = m
    _expect_params(ctx, runs["fused"], runs["torch"], "after the load", exact=False)


def _torch_groups(m: nn.Module) -> list[dict]:
    """The μP run as a torch user writes it: baked lr and weight_decay, torch's keys only."""
    return [
        {"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
        for g in mup_groups(m, bake=True)
    ]


def check_torch_to_fused(ctx: Ctx) -> None:
    """torch.optim.AdamW checkpoints resumed by fused_mup.AdamW through
    dcp.load(planner=fused_mup.dcp.LoadPlanner()), each matching torch's uninterrupted run:

    * torch's keys only, into fused_mup groups at their defaults (a plain strict dcp.load
      raises on the missing lr_mult);
    * groups from ``param_groups(..., bake=True)`` (they hold lr_mult = 1, no bf16_update),
      into μP groups: the checkpoint's baked lr and lr_mult = 1 win.

    And into μP groups from a checkpoint with torch's keys only: the live multipliers stay
    and the checkpoint's lr is their base lr, as load_state_dict does for torch.save files."""
    import fused_mup.dcp

    cases = {
        "plain": (_torch_groups, lambda m: [{"params": g["params"]} for g in _torch_groups(m)]),
        "baked_preset": (
            lambda m: mup_groups(m, bake=True),
            lambda m: mup_groups(m, bake=False),
        ),
    }
    for (case, (torch_groups, fused_groups)), (name, flatten) in zip(
        [*cases.items(), *cases.items()], [*FORMATS.items()] * 2
    ):
        what = f"{case}, {name}"
        straight = fsdp(ctx)
        straight_opt = torch.optim.AdamW(torch_groups(straight))
        _train(ctx, straight, straight_opt, range(STEPS))

        first = fsdp(ctx)
        first_opt = torch.optim.AdamW(torch_groups(first))
        _train(ctx, first, first_opt, range(SAVE_AT))
        path = _save(ctx, first, first_opt, f"torch_{case}_{name}", flatten)

        resumed = fsdp(ctx)
        resumed_opt = fused(fused_groups(resumed))
        if case == "plain":
            try:
                _load(resumed, resumed_opt, path, flatten)
                ctx.failures.append(f"{what}: a strict dcp.load without the planner loaded")
            except CheckpointException as e:
                ctx.expect("Missing key in checkpoint" in str(e), f"{what}: {e}")
        _load(resumed, resumed_opt, path, flatten, planner=fused_mup.dcp.LoadPlanner())
        _train(ctx, resumed, resumed_opt, range(SAVE_AT, STEPS))
        _expect_params(ctx, resumed, straight, f"{what}: resumed vs torch", exact=False)
        for p, q in zip(resumed.parameters(), straight.parameters()):
            ctx.expect(
                float(resumed_opt.state[p]["step"]) == float(straight_opt.state[q]["step"]),
                f"{what}: step count",
            )
        if case == "plain":  # the same checkpoint into μP groups
            mup = fsdp(ctx)
            keys = ("params", "lr_mult", "wd_mult")  # no preset metadata: torch's file lacks it
            mup_opt = fused([{k: g[k] for k in keys} for g in mup_groups(mup, bake=False)])
            live = [(g["lr_mult"], g["wd_mult"]) for g in mup_opt.param_groups]
            _load(mup, mup_opt, path, flatten, planner=fused_mup.dcp.LoadPlanner())
            got = [(g["lr_mult"], g["wd_mult"]) for g in mup_opt.param_groups]
            ctx.expect(got == live, f"{what}: the live multipliers must stay: {got}")
            lrs = [g["lr"] for g in mup_opt.param_groups]
            want = [g["lr"] for g in first_opt.param_groups]
            ctx.expect(lrs == want, f"{what}: lr {lrs} must be the checkpoint's {want}")


def check_fused_to_torch(ctx: Ctx) -> None:
    """A fused_mup.AdamW checkpoint with μP groups (lr_mult 0.25, wd_mult 4 and 0) resumed by
    torch.optim.AdamW through dcp.load(planner=fused_mup.dcp.LoadPlanner()): the planner bakes
    the multipliers as to_torch_state_dict does, so torch continues the fused run; its groups
    hold no fused_mup key."""
    import fused_mup
    import fused_mup.dcp

    for name, flatten in FORMATS.items():
        straight = fsdp(ctx)
        straight_opt = fused(mup_groups(straight, bake=False))
        _train(ctx, straight, straight_opt, range(STEPS))

        first = fsdp(ctx)
        first_opt = fused(mup_groups(first, bake=False))
        _train(ctx, first, first_opt, range(SAVE_AT))
        expected = fused_mup.to_torch_state_dict(first_opt.state_dict())["param_groups"]
        path = _save(ctx, first, first_opt, f"fused_{name}", flatten)

        resumed = fsdp(ctx)
        # The same partition, but torch's plain groups: the checkpoint must bring the lrs.
        plain = [{"params": g["params"]} for g in mup_groups(resumed, bake=False)]
        resumed_opt = torch.optim.AdamW(plain, lr=LR, weight_decay=WEIGHT_DECAY)
        _load(resumed, resumed_opt, path, flatten, planner=fused_mup.dcp.LoadPlanner())
        for i, (g, want) in enumerate(zip(resumed_opt.param_groups, expected)):
            got = (g["lr"], g["weight_decay"])
            ctx.expect(got == (want["lr"], want["weight_decay"]), f"{name}: group {i}: {got}")
            ctx.expect("lr_mult" not in g and "wd_mult" not in g, f"{name}: group {i} keys")
        _train(ctx, resumed, resumed_opt, range(SAVE_AT, STEPS))
        _expect_params(ctx, resumed, straight, f"{name}: torch resumed vs fused", exact=False)


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "dcp_round_trip": check_dcp_round_trip,
    "flattened_empty_state": check_flattened_empty_state,
    "torch_to_fused": check_torch_to_fused,
    "fused_to_torch": check_fused_to_torch,
}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(__name__, WORLD_SIZE, tmp_path_factory.mktemp("dcp"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_dcp(rank_results: list[dict], check: str) -> None:
    assert_check(rank_results, check)
