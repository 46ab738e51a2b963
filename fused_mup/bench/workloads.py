"""Workloads: model-shaped parameter lists in μP groups, and the AdamW byte model.

Full workloads carry the model's name (``gpt2-124m``); smoke workloads are tiny and named
for what they are (``tiny-gpt2-d32``), never after a model they are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "QUICK_WORKLOADS",
    "MoeWorkload",
    "Workload",
    "WorkloadGroup",
    "allocate_params",
    "bytes_per_param",
    "dtype_name",
    "gpt2_workload",
    "llama_workload",
    "many_small_workload",
    "moe_workload",
    "workloads",
]

# μP base width: hidden matrices get lr_mult = BASE_WIDTH / width.
BASE_WIDTH = 256


def bytes_per_param(
    param_dtype: torch.dtype,
    state_dtype: torch.dtype | None = None,
    amsgrad: bool = False,
    grad_dtype: torch.dtype | None = None,
) -> int:
    """Minimum bytes one AdamW step moves per parameter.

    ``2·P + G + 2·k·S``: read and write the param, read the grad, read and write each of
    the k states (exp_avg, exp_avg_sq, and max_exp_avg_sq with AMSGrad).

    Args:
        param_dtype: Parameter dtype (P bytes).
        state_dtype: Optimizer state dtype (S bytes); ``None`` means the param dtype.
        amsgrad: Whether a third state (running max of exp_avg_sq) is kept.
        grad_dtype: Gradient dtype (G bytes); ``None`` means the param dtype.

    Returns:
        Bytes per parameter: 28 for fp32, 22 for bf16 params with fp32 states, 14 for
        pure bf16 (+2·S with AMSGrad).
    """
    p = torch.empty((), dtype=param_dtype).element_size()
    g = torch.empty((), dtype=grad_dtype or param_dtype).element_size()
    s = torch.empty((), dtype=state_dtype or param_dtype).element_size()
    n_states = 3 if amsgrad else 2
    return 2 * p + g + 2 * n_states * s


def dtype_name(dt: torch.dtype) -> str:
    """``torch.float32`` -> ``fp32`` (``bf16``, ``fp16``; others without the prefix)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dt, str(dt).removeprefix("torch.")
    )


@dataclass(frozen=True)
class WorkloadGroup:
    """One μP parameter group of a workload: tensor shapes and the per-group multipliers."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    lr_mult: float = 1.0
    wd_mult: float = 1.0

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


@dataclass(frozen=True)
class Workload:
    """A model-shaped parameter list split into μP groups."""

    name: str
    description: str
    groups: tuple[WorkloadGroup, ...]
    param_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype | None = None  # None: same as params

    @property
    def numel(self) -> int:
        return sum(g.numel for g in self.groups)

    @property
    def n_tensors(self) -> int:
        return sum(len(g.shapes) for g in self.groups)

    @property
    def mode(self) -> str:
        """Short dtype mode, e.g. ``fp32``, ``bf16/fp32`` (params/states)."""
        p = dtype_name(self.param_dtype)
        s = dtype_name(self.state_dtype or self.param_dtype)
        return p if p == s else f"{p}/{s}"

    def estimate_bytes(self, amsgrad: bool = False) -> int:
        """Memory for params + grads + the largest state + foreach temporaries."""
        p = torch.empty((), dtype=self.param_dtype).element_size()
        s = max(torch.empty((), dtype=self.state_dtype or self.param_dtype).element_size(), p)
        # Foreach/compiled baselines allocate about two state-sized temporaries.
        per = 2 * p + (3 if amsgrad else 2) * s + 2 * s
        return self.numel * per


def gpt2_workload(
    name: str,
    d: int,
    n_layers: int,
    vocab: int = 50257,
    ctx: int = 1024,
    dtype: torch.dtype = torch.float32,
    description: str = "",
) -> Workload:
    """GPT-2 param list (tied embeddings, biases, LayerNorms) in 5 μP groups.

    Groups: embedding (wte, wpe), attention matrices, MLP matrices (both hidden:
    ``lr_mult = 256 / d``), biases and LayerNorm gains/biases (no weight decay).
    ``12 · n_layers + 4`` tensors.
    """
    attn = [(d, 3 * d), (d, d)] * n_layers
    mlp = [(d, 4 * d), (4 * d, d)] * n_layers
    bias = [(3 * d,), (d,), (4 * d,), (d,)] * n_layers
    norm = [(d,)] * (4 * n_layers + 2)
    hidden = BASE_WIDTH / d
    groups = (
        WorkloadGroup("embedding", ((vocab, d), (ctx, d)), 1.0, 1.0),
        WorkloadGroup("attn", tuple(attn), hidden, 1.0),
        WorkloadGroup("mlp", tuple(mlp), hidden, 1.0),
        WorkloadGroup("bias", tuple(bias), 1.0, 0.0),
        WorkloadGroup("norm", tuple(norm), 1.0, 0.0),
    )
    desc = description or f"GPT-2 shapes d={d} L={n_layers} vocab={vocab} ctx={ctx}"
    return Workload(name, desc, groups, dtype, None)


def llama_workload(
    name: str,
    d: int,
    n_layers: int,
    ffn: int,
    vocab: int,
    n_heads: int,
    n_kv_heads: int,
    param_dtype: torch.dtype = torch.bfloat16,
    state_dtype: torch.dtype | None = torch.float32,
    description: str = "",
) -> Workload:
    """Llama-style param list (tied embeddings, GQA, SwiGLU, RMSNorm) in 4 μP groups.

    Groups: embedding, attention matrices, MLP matrices (hidden: ``lr_mult = 256 / d``)
    and RMSNorm gains (no weight decay). No biases, as in Llama.
    """
    kv = d // n_heads * n_kv_heads
    attn = [(d, d), (kv, d), (kv, d), (d, d)] * n_layers
    mlp = [(ffn, d), (ffn, d), (d, ffn)] * n_layers
    norm = [(d,)] * (2 * n_layers + 1)
    hidden = BASE_WIDTH / d
    groups = (
        WorkloadGroup("embedding", ((vocab, d),), 1.0, 1.0),
        WorkloadGroup("attn", tuple(attn), hidden, 1.0),
        WorkloadGroup("mlp", tuple(mlp), hidden, 1.0),
        WorkloadGroup("norm", tuple(norm), 1.0, 0.0),
    )
    desc = description or (
        f"Llama shapes d={d} L={n_layers} ffn={ffn} vocab={vocab} heads={n_heads}/{n_kv_heads}"
    )
    return Workload(name, desc, groups, param_dtype, state_dtype)


def many_small_workload(
    name: str = "many-small",
    n_tensors: int = 1024,
    n_groups: int = 8,
    min_numel: int = 1024,
    max_numel: int = 8192,
    dtype: torch.dtype = torch.float32,
) -> Workload:
    """Many small tensors (launch overhead dominates) spread round-robin over groups.

    Sizes cycle deterministically through ``[min_numel, max_numel]``; every other tensor
    is 2-D so both layouts occur.
    """
    shapes: list[list[tuple[int, ...]]] = [[] for _ in range(n_groups)]
    span = max_numel - min_numel
    for i in range(n_tensors):
        # 2654435761: Knuth's multiplicative hash, spreads sizes over the range.
        n = min_numel + (i * 2654435761) % (span + 1) if span else min_numel
        shape = (n // 64, 64) if i % 2 and n >= 128 else (n,)
        shapes[i % n_groups].append(shape)
    groups = tuple(
        WorkloadGroup(f"g{k}", tuple(s), lr_mult=1.0 / (1 + k), wd_mult=0.0 if k % 2 else 1.0)
        for k, s in enumerate(shapes)
    )
    sizes = f"{min_numel}-{max_numel}" if span else f"{min_numel:,}"
    desc = f"{n_tensors:,} tensors of {sizes} elements in {n_groups} groups"
    return Workload(name, desc, groups, dtype, None)


@dataclass(frozen=True)
class MoeWorkload(Workload):
    """A workload whose group ``experts`` holds ``n_layers × n_experts`` experts of
    ``params_per_expert`` tensors each, layer by layer, expert by expert."""

    n_layers: int = 0
    n_experts: int = 0
    params_per_expert: int = 3

    def expert_of(self) -> list[tuple[int, int] | None]:
        """``(layer, expert)`` of every param in :func:`allocate_params` order, None for the
        shared params (embedding, attention, routers, norms)."""
        out: list[tuple[int, int] | None] = []
        for g in self.groups:
            if g.name != "experts":
                out += [None] * len(g.shapes)
                continue
            per_layer = self.n_experts * self.params_per_expert
            out += [(i // per_layer, i % per_layer // self.params_per_expert)
                    for i in range(len(g.shapes))]  # fmt: skip
        return out


def moe_workload(
    name: str,
    d: int,
    n_layers: int,
    n_experts: int,
    ffn: int,
    vocab: int,
    dtype: torch.dtype = torch.float32,
) -> MoeWorkload:
    """Mixture-of-experts param list (tied embeddings, a router per layer, SwiGLU experts,
    RMSNorm) in 5 μP groups: ``2 + 7 · n_layers + 3 · n_experts · n_layers`` tensors.

    Groups: embedding, attention matrices and routers (hidden: ``lr_mult = 256 / d``), the
    experts' matrices (hidden), RMSNorm gains (no weight decay).
    """
    attn = [(d, d)] * 4 * n_layers
    routers = [(n_experts, d)] * n_layers
    experts = [(ffn, d), (ffn, d), (d, ffn)] * n_experts * n_layers
    norm = [(d,)] * (2 * n_layers + 1)
    hidden = BASE_WIDTH / d
    groups = (
        WorkloadGroup("embedding", ((vocab, d),), 1.0, 1.0),
        WorkloadGroup("attn", tuple(attn), hidden, 1.0),
        WorkloadGroup("router", tuple(routers), hidden, 1.0),
        WorkloadGroup("experts", tuple(experts), hidden, 1.0),
        WorkloadGroup("norm", tuple(norm), 1.0, 0.0),
    )
    desc = f"MoE shapes d={d} L={n_layers} experts={n_experts} ffn={ffn} vocab={vocab}"
    return MoeWorkload(name, desc, groups, dtype, None, n_layers, n_experts, 3)


def workloads(smoke: bool = False) -> dict[str, Workload]:
    """All workloads by name; ``smoke=True`` gives the tiny CI versions, named for their
    shapes (``tiny-gpt2-d32``), in the same order as the full ones."""
    if smoke:
        # One layer and few tensors: under TRITON_INTERPRET=1 each fused_mup step costs
        # ~10 ms per tensor, and the smoke run must stay within seconds.
        ws = [
            gpt2_workload("tiny-gpt2-d32", 32, 1, vocab=256, ctx=64),
            gpt2_workload("tiny-gpt2-d48", 48, 1, vocab=256, ctx=64),
            gpt2_workload("tiny-gpt2-d64", 64, 1, vocab=256, ctx=64),
            llama_workload("tiny-llama-d32", 32, 1, 128, 256, 4, 2),
            llama_workload("tiny-llama-d48", 48, 1, 128, 256, 4, 2),
            many_small_workload("tiny-many-small", 32, 8, 64, 512),
        ]
    else:
        ws = [
            gpt2_workload("gpt2-124m", 768, 12),
            gpt2_workload("gpt2-350m", 1024, 24),
            gpt2_workload("gpt2-1.3b", 2048, 24),
            # Llama-3.2-1B / 3B configs; bf16 params with fp32 states (fp32 params for 3B
            # would need 3.2e9 * 24 B = 77 GB before temporaries).
            llama_workload("llama-1b", 2048, 16, 8192, 128256, 32, 8),
            llama_workload("llama-3b", 3072, 28, 8192, 128256, 24, 8),
            many_small_workload(),
        ]
    return {w.name: w for w in ws}


# Subset for a bounded run (bench/gpu_check.sh has 10 minutes a call).
QUICK_WORKLOADS = ("gpt2-124m", "gpt2-1.3b", "llama-1b", "many-small")


def allocate_params(w: Workload, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """Allocate a workload's params with fixed random grads, grouped.

    Grads are small and never change, so repeated steps never produce NaNs.

    Args:
        w: The workload.
        device: Where to allocate.
        seed: Generator seed.

    Returns:
        ``[{"params", "lr_mult", "wd_mult", "name"}]``, one dict per μP group.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    groups = []
    for g in w.groups:
        ps = []
        for shape in g.shapes:
            p = torch.nn.Parameter(torch.empty(shape, dtype=w.param_dtype, device=device))
            with torch.no_grad():
                p.normal_(0.0, 0.02, generator=gen)
            p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=gen)
            ps.append(p)
        groups.append({"params": ps, "lr_mult": g.lr_mult, "wd_mult": g.wd_mult, "name": g.name})
    return groups
