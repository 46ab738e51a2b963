"""torchtitan (PyPI 0.3.0): fused_mup.AdamW through a subclass of its OptimizersContainer, on
an FSDP2 model over 2 gloo ranks, against torchtitan's default AdamW container on the same run:
steps, the flattened optimizer state dict it checkpoints, and DCP resumes both ways through
torchtitan's own call (``dcp.load`` on the container as a Stateful, no planner).

The container below is the recipe in docs/distributed.md, word for word.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from rank_harness import Ctx, assert_check, run_ranks
from rank_models import LR, STEPS, WEIGHT_DECAY, backward, fsdp

pytest.importorskip(
    "torchtitan", reason="README.md's install line installs torchtitan 0.3.0 (--no-deps)"
)

WORLD_SIZE = 2
SAVE_AT = 3


def _container_class():
    from torchtitan.components.optimizer import OptimizersContainer

    import fused_mup
    import fused_mup.dcp

    class FusedMupOptimizersContainer(OptimizersContainer):
        """torchtitan's container with ``optimizer_name="fused_mup.AdamW"`` available."""

        @staticmethod
        def _resolve_optimizer_factory(name: str):
            if name == "fused_mup.AdamW":
                return fused_mup.AdamW
            return OptimizersContainer._resolve_optimizer_factory(name)

        def state_dict(self):
            # Default lr_mult / wd_mult / ... left out: torch-AdamW checkpoints load strictly.
            return fused_mup.dcp.drop_default_group_keys(super().state_dict())

        def load_state_dict(self, state_dict):
            super().load_state_dict(fused_mup.dcp.fill_default_group_keys(state_dict))

    return FusedMupOptimizersContainer


def _containers(ctx: Ctx, kind: str):
    from torchtitan.components.optimizer import OptimizersContainer, ParamGroupConfig

    m = fsdp(ctx)
    kwargs = {"lr": LR, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": WEIGHT_DECAY}
    if kind == "fused":
        cls, name = _container_class(), "fused_mup.AdamW"
    else:
        cls, name = OptimizersContainer, "AdamW"  # torchtitan's default_adamw
    config = OptimizersContainer.Config(
        param_groups=[
            ParamGroupConfig(pattern=r".*", optimizer_name=name, optimizer_kwargs=kwargs)
        ],
        # Constructor settings, not group keys (those would be checkpointed with the groups).
        optimizer_factory_kwargs_by_name={"fused_mup.AdamW": {"backend": "triton"}},
    )
    return m, cls(config, model_parts=[m])


def _train(ctx: Ctx, m, opt, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        backward(ctx, m, step)
        opt.step()


def _expect_params(ctx: Ctx, a, b, what: str) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        ctx.expect_close(p, q, f"{what}: {name}")


def check_container_parity(ctx: Ctx) -> None:
    """The subclass builds fused_mup.AdamW from the name; 5 steps equal torch's container;
    its flattened state dict has torch's keys exactly, with equal values."""
    import fused_mup

    ref, ref_opt = _containers(ctx, "torch")
    m, opt = _containers(ctx, "fused")
    ctx.expect([type(o) for o in opt.optimizers] == [fused_mup.AdamW], f"built {opt.optimizers}")
    _train(ctx, ref, ref_opt, range(STEPS))
    _train(ctx, m, opt, range(STEPS))
    _expect_params(ctx, m, ref, "after 5 steps")
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    ctx.expect(sorted(sd) == sorted(ref_sd), f"keys differ: {sorted(set(sd) ^ set(ref_sd))}")
    for key in sorted(set(sd) & set(ref_sd)):
        a, b = sd[key], ref_sd[key]
        if torch.is_tensor(b):
            ctx.expect_close(a.float(), b.float(), key)
        elif key.endswith((".fused", ".foreach")):
            continue  # both say what torchtitan passed; fused_mup ignores them
        else:
            ctx.expect(a == b, f"{key}: {a!r} != {b!r}")


def _save(ctx: Ctx, m, opt, name: str):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    path = ctx.tmp / name
    dcp.save({"model": get_model_state_dict(m), "optimizer": opt}, checkpoint_id=path)
    return path


def _load(m, opt, path) -> None:
    """As torchtitan's CheckpointManager.dcp_load: the container is a Stateful, no planner."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(m), "optimizer": opt}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(m, state["model"])


def check_dcp_both_ways(ctx: Ctx) -> None:
    """A torch-AdamW checkpoint resumes with fused_mup.AdamW and a fused_mup checkpoint with
    torch's AdamW, each matching the other class's uninterrupted run over steps 4-5."""
    straight = {}
    for kind in ("torch", "fused"):
        m, opt = _containers(ctx, kind)
        _train(ctx, m, opt, range(STEPS))
        straight[kind] = m
    for saved, resumed in (("torch", "fused"), ("fused", "torch")):
        m, opt = _containers(ctx, saved)
        _train(ctx, m, opt, range(SAVE_AT))
        path = _save(ctx, m, opt, f"torchtitan_{saved}")
        m, opt = _containers(ctx, resumed)
        _load(m, opt, path)
        _train(ctx, m, opt, range(SAVE_AT, STEPS))
        _expect_params(ctx, m, straight[saved], f"{saved} -> {resumed}")


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "container_parity": check_container_parity,
    "dcp_both_ways": check_dcp_both_ways,
}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed")
    return run_ranks(__name__, WORLD_SIZE, tmp_path_factory.mktemp("torchtitan"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_torchtitan(rank_results: list[dict], check: str) -> None:
    assert_check(rank_results, check)
