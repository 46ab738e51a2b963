"""The model, wrappings, μP groups and data the distributed checks share (run inside ranks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
import torch.nn.functional as F
from rank_harness import Ctx
from torch import nn

__all__ = [
    "LR",
    "OUT",
    "STEPS",
    "VOCAB",
    "WEIGHT_DECAY",
    "Tiny",
    "backward",
    "count_launches",
    "ddp",
    "expect_same_params",
    "fsdp",
    "fused",
    "model",
    "mup_groups",
    "counterpart",
]

LR, WEIGHT_DECAY, STEPS = 1e-2, 0.1, 5
VOCAB, OUT = 11, 5  # odd sizes: Shard(0) splits them unevenly over 2 ranks


class Tiny(nn.Module):
    """Embedding, hidden, vector and readout params: every μP role, a few hundred elements.
    ``unused`` never gets a grad (a frozen-by-routing expert, a head not trained this phase)."""

    def __init__(self, width: int = 16, unused: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.hidden = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, OUT)
        if unused:
            self.unused = nn.Linear(width, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + F.gelu(self.hidden(h))
        return self.head(self.norm(h))


def model(ctx: Ctx, **kwargs) -> Tiny:
    torch.manual_seed(0)  # the same init on every rank and in every run
    return Tiny(**kwargs).to(ctx.device)


def fsdp(ctx: Ctx, mesh=None, **kwargs) -> Tiny:
    from torch.distributed.fsdp import fully_shard

    mesh = mesh if mesh is not None else ctx.mesh((ctx.world_size,))
    m = model(ctx, **kwargs)
    fully_shard(m.hidden, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def ddp(ctx: Ctx) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model(ctx), device_ids=ids)


def mup_groups(m: nn.Module, bake: bool) -> list[dict]:
    """μP groups for fused_mup (lr_mult / wd_mult) or baked into plain lr for torch."""
    import fused_mup

    with torch.device("meta"):
        base = Tiny(width=4, unused=hasattr(m, "unused"))
    return fused_mup.param_groups(
        m, "mup", base_model=base, lr=LR, weight_decay=WEIGHT_DECAY, bake=bake
    )


def backward(ctx: Ctx, m: nn.Module, step: int, rank: int | None = None) -> None:
    """Different data per rank (or per ``rank`` given), so that the reduction matters."""
    gen = torch.Generator().manual_seed(1000 * step + (ctx.rank if rank is None else rank))
    tokens = torch.randint(0, VOCAB, (12,), generator=gen).to(ctx.device)
    m(tokens).square().mean().backward()


@contextlib.contextmanager
def count_launches() -> Iterator[list]:
    from fused_mup.kernels import adamw_kernel

    calls: list = []
    real_run = adamw_kernel.run

    def counting_run(*args, **kwargs):
        calls.append(1)
        return real_run(*args, **kwargs)

    with mock.patch.object(adamw_kernel, "run", counting_run):
        yield calls


def fused(params, **kwargs):
    import fused_mup

    return fused_mup.AdamW(params, backend="triton", **kwargs)


def expect_same_params(ctx: Ctx, a_model: nn.Module, b_model: nn.Module, what: str) -> None:
    for (name, a), b in zip(a_model.named_parameters(), b_model.parameters()):
        ctx.expect_close(a, b, f"{what}: {name}")


def counterpart(p: torch.Tensor, m: nn.Module, other: nn.Module) -> torch.Tensor:
    names = {id(q): n for n, q in m.named_parameters()}
    return other.get_parameter(names[id(p)])
