"""Scale-out: FSDP2, DCP, global-norm clipping, DDP and ZeRO, on 2 ranks.

Each check runs fused_mup.AdamW(backend="triton") and torch.optim.AdamW under the same wrapping
on the same data and compares them. Process start-up dominates on CPU, so one spawn of 2 workers
runs every check in turn; each worker writes its results to a JSON file and the tests below read
them, one test per check. gloo + Triton's interpreter on CPU; nccl on 2 GPUs when there are 2.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tolerances import assert_close
from torch import nn

WORLD_SIZE = 2
USE_CUDA = torch.cuda.device_count() >= WORLD_SIZE
LR, WEIGHT_DECAY, STEPS = 1e-2, 0.1, 5
VOCAB, OUT = 11, 5  # odd sizes: Shard(0) splits them unevenly over 2 ranks
# A failing rank leaves its peer waiting in a collective; this bounds the wait.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)
SPAWN_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)


class Tiny(nn.Module):
    """Embedding, hidden, vector and readout params: every μP role, a few hundred elements."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.hidden = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, OUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + F.gelu(self.hidden(h))
        return self.head(self.norm(h))


# --------------------------------------------------------------------------------------------
# Worker side: everything below runs in the spawned ranks.
# --------------------------------------------------------------------------------------------


class Ctx:
    """What every check needs: rank, device, the 1-D mesh, a scratch dir."""

    def __init__(self, rank: int, device: torch.device, tmp: Path) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self.rank = rank
        self.device = device
        self.tmp = tmp
        self.mesh = init_device_mesh(device.type, (WORLD_SIZE,))
        self.failures: list[str] = []

    def expect_close(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        """Records a mismatch instead of raising: a rank that stopped early would leave its
        peer hanging in the next collective."""
        try:
            assert_close(_local(actual), _local(expected), torch.float32, what)
        except AssertionError as e:
            self.failures.append(str(e))

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _model(ctx: Ctx) -> Tiny:
    torch.manual_seed(0)  # the same init on every rank and in every run
    return Tiny().to(ctx.device)


def _fsdp(ctx: Ctx) -> Tiny:
    from torch.distributed.fsdp import fully_shard

    model = _model(ctx)
    fully_shard(model.hidden, mesh=ctx.mesh)
    fully_shard(model, mesh=ctx.mesh)
    return model


def _ddp(ctx: Ctx) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(_model(ctx), device_ids=ids)


def _mup_groups(model: nn.Module, bake: bool) -> list[dict]:
    """μP groups for fused_mup (lr_mult / wd_mult) or baked into plain lr for torch."""
    import fused_mup

    with torch.device("meta"):
        base = Tiny(width=4)
    return fused_mup.param_groups(
        model, "mup", base_model=base, lr=LR, weight_decay=WEIGHT_DECAY, bake=bake
    )


def _backward(ctx: Ctx, model: nn.Module, step: int) -> None:
    # Different data per rank, so that the reduction across ranks matters.
    gen = torch.Generator().manual_seed(1000 * step + ctx.rank)
    tokens = torch.randint(0, VOCAB, (12,), generator=gen).to(ctx.device)
    model(tokens).square().mean().backward()


@contextlib.contextmanager
def _count_launches() -> Iterator[list]:
    from fused_mup.kernels import adamw_kernel

    calls: list = []
    real_run = adamw_kernel.run

    def counting_run(*args, **kwargs):
        calls.append(1)
        return real_run(*args, **kwargs)

    with mock.patch.object(adamw_kernel, "run", counting_run):
        yield calls


def _fused(params, **kwargs):
    import fused_mup

    return fused_mup.AdamW(params, backend="triton", **kwargs)


def _expect_same_params(ctx: Ctx, fused: nn.Module, ref: nn.Module, what: str) -> None:
    for (name, a), b in zip(fused.named_parameters(), ref.parameters()):
        ctx.expect_close(a, b, f"{what}: {name}")


def _twin(p: torch.Tensor, model: nn.Module, other: nn.Module) -> torch.Tensor:
    names = {id(q): n for n, q in model.named_parameters()}
    return other.get_parameter(names[id(p)])


def check_fsdp2_parity(ctx: Ctx) -> None:
    """FSDP2, μP groups with lr_mult: same local shards as torch with baked lr, step by step;
    one kernel launch per step on each rank; states are DTensors."""
    fused_model, ref_model = _fsdp(ctx), _fsdp(ctx)
    groups = _mup_groups(fused_model, bake=False)
    ctx.expect(any(g["lr_mult"] != 1.0 for g in groups), "the μP groups must carry lr_mult")
    rows = fused_model.head.weight.to_local().shape[0]
    ctx.expect(rows == (3, 2)[ctx.rank], f"head.weight: {rows} local rows; expected 3 / 2 split")
    fused = _fused(groups)
    ref = torch.optim.AdamW(_mup_groups(ref_model, bake=True))
    for step in range(STEPS):
        for model, opt in ((fused_model, fused), (ref_model, ref)):
            opt.zero_grad()
            _backward(ctx, model, step)
        with _count_launches() as calls:
            fused.step()
        ref.step()
        ctx.expect(len(calls) == 1, f"step {step}: {len(calls)} kernel launches on this rank")
        _expect_same_params(ctx, fused_model, ref_model, f"step {step}")
    from torch.distributed.tensor import DTensor

    for p in fused_model.parameters():
        state = fused.state[p]
        ctx.expect(isinstance(state["exp_avg"], DTensor), "exp_avg must be a DTensor, as torch's")
        ctx.expect_close(
            state["exp_avg_sq"],
            ref.state[_twin(p, fused_model, ref_model)]["exp_avg_sq"],
            "exp_avg_sq",
        )


def check_fsdp2_clip(ctx: Ctx) -> None:
    """opt.clip_grad_norm_ under FSDP2 vs torch.nn.utils.clip_grad_norm_: same global norm
    (all-reduced over the mesh), same clipped trajectory; the grads stay unclipped."""
    max_norm = 0.05
    fused_model, ref_model = _fsdp(ctx), _fsdp(ctx)
    fused = _fused(_mup_groups(fused_model, bake=False))
    ref = torch.optim.AdamW(_mup_groups(ref_model, bake=True))
    for step in range(STEPS):
        for model, opt in ((fused_model, fused), (ref_model, ref)):
            opt.zero_grad()
            _backward(ctx, model, step)
        grads = [p.grad.to_local().clone() for p in fused_model.parameters()]
        norm = fused.clip_grad_norm_(max_norm)
        ref_norm = _full(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm))
        ctx.expect_close(_full(norm).reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        ctx.expect(ref_norm.item() > 2 * max_norm, f"step {step}: clipping must be active")
        ctx.expect(
            all(torch.equal(g, p.grad.to_local()) for g, p in zip(grads, fused_model.parameters())),
            "clip_grad_norm_ must leave the grads as they are",
        )
        fused.step()
        ref.step()
        _expect_same_params(ctx, fused_model, ref_model, f"step {step}")


def check_dcp_round_trip(ctx: Ctx) -> None:
    """FSDP2 + DCP: save model and optimizer after 3 steps on 2 ranks, load into a fresh model
    and optimizer on 2 ranks, continue: bit-identical to the uninterrupted run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    save_at = 3

    def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
        for step in steps:
            opt.zero_grad()
            _backward(ctx, model, step)
            opt.step()

    straight = _fsdp(ctx)
    straight_opt = _fused(_mup_groups(straight, bake=False))
    train(straight, straight_opt, range(STEPS))

    first = _fsdp(ctx)
    first_opt = _fused(_mup_groups(first, bake=False))
    train(first, first_opt, range(save_at))
    path = ctx.tmp / "dcp"
    model_sd, optim_sd = get_state_dict(first, first_opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    del first, first_opt

    resumed = _fsdp(ctx)
    with torch.no_grad():  # make sure the load, not the seed, sets the weights
        for p in resumed.parameters():
            p.zero_()
    groups = _mup_groups(resumed, bake=False)
    lr_mults = [g["lr_mult"] for g in groups]
    for g in groups:  # the checkpoint must bring these back
        g["lr_mult"] = 1.0
    resumed_opt = _fused(groups)
    model_sd, optim_sd = get_state_dict(resumed, resumed_opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    ctx.expect(
        [g["lr_mult"] for g in resumed_opt.param_groups] == lr_mults,
        "lr_mult must come back from the checkpoint",
    )
    train(resumed, resumed_opt, range(save_at, STEPS))
    for (name, a), b in zip(resumed.named_parameters(), straight.parameters()):
        ctx.expect(torch.equal(a.to_local(), b.to_local()), f"resumed {name} differs")
    for p, q in zip(resumed.parameters(), straight.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = resumed_opt.state[p][key], straight_opt.state[q][key]
            ctx.expect(torch.equal(a.to_local(), b.to_local()), f"resumed {key} differs")
        ctx.expect(
            float(resumed_opt.state[p]["step"]) == STEPS,
            f"step count {float(resumed_opt.state[p]['step'])} after resuming, not {STEPS}",
        )


def check_ddp_parity(ctx: Ctx) -> None:
    """DDP with lr_mult groups and fused clipping vs torch's, with baked lr."""
    max_norm = 0.05
    fused_model, ref_model = _ddp(ctx), _ddp(ctx)
    fused = _fused(_mup_groups(fused_model.module, bake=False))
    ref = torch.optim.AdamW(_mup_groups(ref_model.module, bake=True))
    for step in range(STEPS):
        for model, opt in ((fused_model, fused), (ref_model, ref)):
            opt.zero_grad()
            _backward(ctx, model, step)
        norm = fused.clip_grad_norm_(max_norm)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm)
        ctx.expect_close(norm.reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        with _count_launches() as calls:
            fused.step()
        ref.step()
        ctx.expect(len(calls) == 1, f"step {step}: {len(calls)} kernel launches")
        _expect_same_params(ctx, fused_model, ref_model, f"step {step}")


def check_zero_parity(ctx: Ctx) -> None:
    """ZeroRedundancyOptimizer(optimizer_class=fused_mup.AdamW) vs (torch.optim.AdamW) on DDP,
    a second group added through add_param_group: each rank updates its partition in at most
    one launch, and the broadcast params match torch's."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fused_mup

    def groups(model: nn.Module, baked: bool) -> tuple[dict, dict]:
        m = model.module
        matrices = [m.embed.weight, m.hidden.weight, m.head.weight]
        vectors = [m.hidden.bias, m.norm.weight, m.norm.bias, m.head.bias]
        if baked:
            return {"params": matrices, "lr": LR * 0.5}, {"params": vectors, "lr": LR * 2.0}
        return {"params": matrices, "lr_mult": 0.5}, {"params": vectors, "lr_mult": 2.0}

    fused_model, ref_model = _ddp(ctx), _ddp(ctx)
    fused_groups, ref_groups = groups(fused_model, False), groups(ref_model, True)
    fused = ZeroRedundancyOptimizer(
        [fused_groups[0]], optimizer_class=fused_mup.AdamW, lr=LR, backend="triton"
    )
    ref = ZeroRedundancyOptimizer([ref_groups[0]], optimizer_class=torch.optim.AdamW, lr=LR)
    fused.add_param_group(fused_groups[1])
    ref.add_param_group(ref_groups[1])
    for step in range(STEPS):
        for model, opt in ((fused_model, fused), (ref_model, ref)):
            opt.zero_grad()
            _backward(ctx, model, step)
        with _count_launches() as calls:
            fused.step()
        ref.step()
        owns = sum(len(g["params"]) for g in fused.optim.param_groups) > 0
        ctx.expect(len(calls) == owns, f"step {step}: {len(calls)} kernel launches on this rank")
        _expect_same_params(ctx, fused_model, ref_model, f"step {step}")
    ctx.expect(
        sorted(g["lr_mult"] for g in fused.param_groups) == [0.5, 2.0],
        "ZeRO must keep lr_mult in its groups",
    )


def check_zero_state_dict(ctx: Ctx) -> None:
    """ZeRO + fused_mup.AdamW: consolidate_state_dict after 3 steps, train on, then roll back
    (ZeRO's load_state_dict writes the local optimizer's state directly) and redo the steps:
    bit-identical to the first pass."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    import fused_mup

    model = _ddp(ctx)
    opt = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=fused_mup.AdamW, lr=LR, backend="triton"
    )

    def train(steps: range) -> list[torch.Tensor]:
        for step in steps:
            opt.zero_grad()
            _backward(ctx, model, step)
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    saved_params = train(range(3))
    opt.consolidate_state_dict(to=0)
    # A copy: rank 0's state_dict() holds its live state tensors, which training mutates.
    box = [copy.deepcopy(opt.state_dict()) if ctx.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # every rank loads the whole state_dict
    first_pass = train(range(3, STEPS))
    with torch.no_grad():
        for p, saved in zip(model.parameters(), saved_params):
            p.copy_(saved)
    opt.load_state_dict(box[0])
    second_pass = train(range(3, STEPS))
    for (name, _), a, b in zip(model.named_parameters(), second_pass, first_pass):
        ctx.expect(torch.equal(a, b), f"{name} after rolling back differs from the first pass")


def check_presets_before_after_fully_shard(ctx: Ctx) -> None:
    """param_groups gives the same roles, multipliers and names before and after fully_shard."""

    def summary(model: nn.Module) -> list[tuple]:
        return [
            (g["role"], g["width_mult"], g["lr_mult"], g["wd_mult"], tuple(g["param_names"]))
            for g in _mup_groups(model, bake=False)
        ]

    before = summary(_model(ctx))
    after = summary(_fsdp(ctx))
    ctx.expect(after == before, f"groups differ after fully_shard:\n{before}\n{after}")
    ctx.expect(len({row[2] for row in before}) > 1, "expected several lr_mult values")


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "fsdp2_parity": check_fsdp2_parity,
    "fsdp2_clip": check_fsdp2_clip,
    "dcp_round_trip": check_dcp_round_trip,
    "ddp_parity": check_ddp_parity,
    "zero_parity": check_zero_parity,
    "zero_state_dict": check_zero_state_dict,
    "presets_after_fully_shard": check_presets_before_after_fully_shard,
}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    if not USE_CUDA:
        # The kernel runs on CPU tensors only in Triton's interpreter, chosen at import time.
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
    out = Path(out_dir)
    results: dict[str, dict] = {}
    try:
        if USE_CUDA:
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        dist.init_process_group(
            "nccl" if USE_CUDA else "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=COLLECTIVE_TIMEOUT,
        )
        ctx = Ctx(rank, device, out)
        for name, check in CHECKS.items():
            start = time.perf_counter()
            ctx.failures = []
            try:
                check(ctx)
                error = "\n".join(ctx.failures) or None
            except Exception:
                error = traceback.format_exc()
            results[name] = {"error": error, "seconds": time.perf_counter() - start}
            if error and "Traceback" in error:
                break  # collectives may be out of step now; later checks would only hang
            dist.barrier()
    except Exception:
        results["setup"] = {"error": traceback.format_exc(), "seconds": 0.0}
    finally:
        (out / f"rank{rank}.json").write_text(json.dumps(results))
        if dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Test side
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Runs every check once, in one spawn of WORLD_SIZE ranks."""
    tmp = tmp_path_factory.mktemp("distributed")
    if not USE_CUDA:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # inherited by the ranks, belt and braces
    context = mp.spawn(
        _worker,
        args=(str(tmp / "store"), str(tmp)),
        nprocs=WORLD_SIZE,
        join=False,
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the {WORLD_SIZE} ranks did not finish in {SPAWN_TIMEOUT_S} s")
    results = []
    for rank in range(WORLD_SIZE):
        path = tmp / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else {})
    return results


@pytest.mark.parametrize("check", list(CHECKS))
def test_distributed(rank_results: list[dict], check: str) -> None:
    for rank, results in enumerate(rank_results):
        if "setup" in results:
            pytest.fail(f"rank {rank} failed to set up:\n{results['setup']['error']}")
        assert check in results, f"rank {rank} did not run {check} (an earlier check crashed)"
        error = results[check]["error"]
        assert error is None, f"rank {rank}, {check}:\n{error}"
