"""2-D parallel on 4 ranks, as torchtitan shards: tensor parallel on the "tp" dim of a 2×2 mesh,
``fully_shard`` on "dp". Fused clipping matches torch.optim.AdamW + clip_grad_norm_, and a DCP
checkpoint saved on the 4 ranks loads on 2 (resharded) and resumes like the uninterrupted run.
HSDP (Replicate × Shard) clips as torch does too.

The model puts every placement the norm must weigh on the mesh: Shard(0) (uneven, 11 and 5 rows
over 2), Shard(1), FSDP's _StridedShard, and Replicate on "tp" (the row-parallel bias, the
sequence-parallel LayerNorm), whose local shards 2 ranks hold alike.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rank_harness import Ctx, assert_check, full, run_ranks
from rank_models import fused
from torch import nn

WORLD_SIZE, DP, TP = 4, 2, 2
LR, WEIGHT_DECAY = 1e-2, 0.1
STEPS, SAVE_AT = 4, 2
VOCAB, OUT, SEQ = 11, 5, 6  # odd vocab and out: uneven row shards over tp

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed"
)


class TinyTP(nn.Module):
    """An embedding, a column- then row-parallel MLP, a LayerNorm and a readout."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, OUT)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.down(F.gelu(self.up(h)))
        return self.head(self.norm(h))


def _model(ctx: Ctx) -> TinyTP:
    torch.manual_seed(0)  # the same init on every rank and in every run
    return TinyTP().to(ctx.device)


def _mesh_2d(ctx: Ctx):
    return ctx.mesh((DP, TP), ("dp", "tp"))


def parallel_2d(ctx: Ctx) -> TinyTP:
    """torchtitan's layout: sequence-parallel activations between the TP regions."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    mesh = _mesh_2d(ctx)
    m = _model(ctx)
    parallelize_module(
        m,
        mesh["tp"],
        {
            "embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "up": ColwiseParallel(input_layouts=Shard(1)),
            "down": RowwiseParallel(output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
        },
    )
    fully_shard(m.up, mesh=mesh["dp"])
    fully_shard(m, mesh=mesh["dp"])
    return m


def fsdp_only(ctx: Ctx, mesh) -> TinyTP:
    """The same model, FSDP only (HSDP on a 2-D mesh)."""
    from torch.distributed.fsdp import fully_shard

    m = _model(ctx)
    fully_shard(m.up, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def _groups(m: nn.Module, bake: bool) -> list[dict]:
    """μP groups: lr_mult / wd_mult for fused_mup, baked into plain lr for torch."""
    import fused_mup

    with torch.device("meta"):
        base = TinyTP(width=4)
    return fused_mup.param_groups(
        m, "mup", base_model=base, lr=LR, weight_decay=WEIGHT_DECAY, bake=bake
    )


def _backward(ctx: Ctx, m: nn.Module, step: int, dp_rank: int) -> None:
    """Data per dp rank (tp ranks of one dp rank must see the same batch)."""
    gen = torch.Generator().manual_seed(1000 * step + dp_rank)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=gen).to(ctx.device)
    m(tokens).square().mean().backward()


def _dp_rank(ctx: Ctx) -> int:
    return ctx.rank // TP  # init_device_mesh lays ranks out row-major: (dp, tp)


def check_2d_clip(ctx: Ctx) -> None:
    """opt.clip_grad_norm_ then opt.step() vs torch.nn.utils.clip_grad_norm_ then
    torch.optim.AdamW.step(), 4 steps: same norm, same params (gathered) on every rank."""
    from torch.distributed.tensor import Replicate

    max_norm = 0.05
    fused_model, ref_model = parallel_2d(ctx), parallel_2d(ctx)
    placements = {str(p.placements) for p in fused_model.parameters()}
    replicated = [n for n, p in fused_model.named_parameters() if Replicate() in p.placements]
    ctx.expect(len(placements) >= 3, f"expected several placements, got {placements}")
    ctx.expect(len(replicated) == 3, f"expected 3 params Replicate on tp, got {replicated}")
    opt = fused(_groups(fused_model, bake=False))
    ref = torch.optim.AdamW(_groups(ref_model, bake=True))
    ctx.expect(any(g["lr_mult"] != 1.0 for g in opt.param_groups), "μP groups need lr_mult")
    for step in range(STEPS):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            _backward(ctx, m, step, _dp_rank(ctx))
        for p in fused_model.parameters():
            ctx.expect(p.grad.placements == p.placements, f"grad placements {p.grad.placements}")
        norm = opt.clip_grad_norm_(max_norm)
        ref_norm = full(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm))
        ctx.expect_close(full(norm).reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        ctx.expect(ref_norm.item() > 2 * max_norm, f"step {step}: clipping must be active")
        opt.step()
        ref.step()
        for (name, p), q in zip(fused_model.named_parameters(), ref_model.parameters()):
            ctx.expect_close(full(p), full(q), f"step {step}: {name}")


def check_hsdp_clip(ctx: Ctx) -> None:
    """HSDP (``fully_shard`` on a 2-D mesh: Replicate on "replicate", Shard on "shard"), every
    param Replicate 2-fold: fused clipping vs torch's, 3 steps, different data per rank."""
    max_norm = 0.05
    mesh = ctx.mesh((DP, TP), ("replicate", "shard"))
    fused_model, ref_model = fsdp_only(ctx, mesh), fsdp_only(ctx, mesh)
    opt = fused(_groups(fused_model, bake=False))
    ref = torch.optim.AdamW(_groups(ref_model, bake=True))
    for step in range(3):
        for m, o in ((fused_model, opt), (ref_model, ref)):
            o.zero_grad()
            _backward(ctx, m, step, ctx.rank)
        norm = opt.clip_grad_norm_(max_norm)
        ref_norm = full(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_norm))
        ctx.expect_close(full(norm).reshape(()), ref_norm.reshape(()), f"step {step}: norm")
        ctx.expect(ref_norm.item() > 2 * max_norm, f"step {step}: clipping must be active")
        opt.step()
        ref.step()
        for (name, p), q in zip(fused_model.named_parameters(), ref_model.parameters()):
            ctx.expect_close(full(p), full(q), f"step {step}: {name}")


def check_2d_clip_edges(ctx: Ctx) -> None:
    """An inf in a grad Replicate on tp: the norm is inf, as torch's (not nan). Params on two
    meshes, or Partial placements: NotImplementedError naming them, on every rank alike."""
    from torch.distributed.tensor import DTensor, Partial

    fused_model, ref_model = parallel_2d(ctx), parallel_2d(ctx)
    opt = fused(_groups(fused_model, bake=False))
    for m in (fused_model, ref_model):
        _backward(ctx, m, 0, _dp_rank(ctx))
        m.norm.weight.grad.to_local()[0] = float("inf")
    norm = full(opt.clip_grad_norm_(1.0))
    ref_norm = full(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0))
    ctx.expect(ref_norm.isinf().item(), f"torch's norm with an inf grad: {ref_norm}")
    ctx.expect(norm.isinf().item(), f"fused norm with an inf grad: {norm}, torch's is inf")

    def refusal(params: list[torch.Tensor], want: str) -> None:
        try:
            fused(params).clip_grad_norm_(1.0)
            ctx.failures.append(f"clip_grad_norm_ must refuse {want}")
        except NotImplementedError as e:
            ctx.expect(want in str(e), f"the error must name {want!r}: {e}")

    mesh = _mesh_2d(ctx)
    dp_only = fsdp_only(ctx, mesh["dp"])  # its params live on the 1-D "dp" mesh
    dp_only.norm.weight.grad = torch.ones_like(dp_only.norm.weight)
    refusal([*fused_model.parameters(), dp_only.norm.weight], "params on 2 device meshes")
    partial = nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Partial(), Partial()]))
    partial.grad = torch.ones_like(partial)  # Replicate: unlike its param
    refusal([partial], "a grad placed (Replicate(), Replicate())")
    partial.grad = DTensor.from_local(torch.ones(3), mesh, [Partial(), Partial()])
    refusal([partial], "placements (Partial(sum), Partial(sum))")


def _make_opt(cls: str, m: nn.Module) -> torch.optim.Optimizer:
    if cls == "torch":
        return torch.optim.AdamW(_groups(m, bake=True))
    return fused(_groups(m, bake=False))


def _train(ctx: Ctx, m: nn.Module, opt, steps: range, dp_rank: int, max_norm: float) -> None:
    """Clipped steps, each class with its own clipping, as a training loop calls it."""
    for step in steps:
        opt.zero_grad()
        _backward(ctx, m, step, dp_rank)
        if isinstance(opt, torch.optim.AdamW):
            torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
        else:
            opt.clip_grad_norm_(max_norm)
        opt.step()


def _full_state(m: nn.Module, opt) -> dict[str, torch.Tensor]:
    """Params and optimizer states as whole tensors, by name (a collective over the mesh)."""
    out = {}
    for name, p in m.named_parameters():
        out[name] = full(p).detach().clone()
        for key, value in opt.state[p].items():
            out[f"{name}.{key}"] = full(value).detach().clone().reshape(-1)
    return out


def check_dcp_4_to_2(ctx: Ctx) -> None:
    """A DCP checkpoint of the 2-D run (4 ranks, after 2 of 4 clipped steps) loads on 2 ranks
    into FSDP2 on a 1-D mesh: every param and state, gathered, is bit-identical to the saved
    one and lr_mult comes back; the resumed run ends where the uninterrupted 2-D run does, and
    where torch.optim.AdamW + clip_grad_norm_ ends through the same save and load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import DeviceMesh

    max_norm = 0.05
    # Every rank builds the 2-rank mesh (its groups are created by all); ranks 0 and 1 use it.
    mesh_2 = DeviceMesh(ctx.device.type, [0, 1], mesh_dim_names=("dp",))
    on_2 = ctx.rank < 2
    ends: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for cls in ("fused", "torch"):
        straight = parallel_2d(ctx)
        straight_opt = _make_opt(cls, straight)
        _train(ctx, straight, straight_opt, range(STEPS), _dp_rank(ctx), max_norm)
        ends[cls] = {"straight": _full_state(straight, straight_opt)}

        first = parallel_2d(ctx)
        first_opt = _make_opt(cls, first)
        _train(ctx, first, first_opt, range(SAVE_AT), _dp_rank(ctx), max_norm)
        saved = _full_state(first, first_opt)
        lr_mults = [g.get("lr_mult") for g in first_opt.param_groups]
        model_sd, optim_sd = get_state_dict(first, first_opt)
        path = ctx.tmp / f"four_ranks_{cls}"
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        dist.barrier()
        if not on_2:
            continue

        resumed = fsdp_only(ctx, mesh_2)
        resumed_opt = _make_opt(cls, resumed)
        if cls == "fused":
            for g in resumed_opt.param_groups:  # the checkpoint must bring these back
                g["lr_mult"] = 1.0
        with torch.no_grad():  # make sure the load, not the seed, sets the weights
            for p in resumed.parameters():
                p.zero_()
        model_sd, optim_sd = get_state_dict(resumed, resumed_opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path, process_group=mesh_2.get_group())
        set_state_dict(
            resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        got = [g.get("lr_mult") for g in resumed_opt.param_groups]
        ctx.expect(got == lr_mults, f"{cls}: lr_mult {got}; saved {lr_mults}")
        loaded = _full_state(resumed, resumed_opt)
        ctx.expect(loaded.keys() == saved.keys(), f"{cls}: loaded {sorted(loaded)}")
        for key in saved.keys() & loaded.keys():
            ctx.expect(torch.equal(loaded[key], saved[key]), f"{cls}: {key} loaded != saved")
        _train(ctx, resumed, resumed_opt, range(SAVE_AT, STEPS), ctx.rank, max_norm)
        ends[cls]["resumed"] = _full_state(resumed, resumed_opt)
        for name, p in ends[cls]["straight"].items():
            ctx.expect_close(ends[cls]["resumed"][name], p, f"{cls}: resumed on 2 vs 4: {name}")
    if on_2:
        for name, p in ends["torch"]["resumed"].items():
            ctx.expect_close(ends["fused"]["resumed"][name], p, f"resumed fused vs torch: {name}")


CHECKS: dict[str, Callable[[Ctx], None]] = {
    "2d_clip": check_2d_clip,
    "2d_clip_edges": check_2d_clip_edges,
    "hsdp_clip": check_hsdp_clip,
    "dcp_4_to_2": check_dcp_4_to_2,
}


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_ranks(__name__, WORLD_SIZE, tmp_path_factory.mktemp("2d"))


@pytest.mark.parametrize("check", list(CHECKS))
def test_2d(rank_results: list[dict], check: str) -> None:
    assert_check(rank_results, check)
