"""Optimizer-step benchmarks: ``fused_mup.AdamW`` against other AdamW implementations.

Every implementation steps the *same* parameter list (same tensors, same fixed random
grads) of a workload shaped like a real model with μP parameter groups. For each
workload × implementation the benchmark reports:

* device time per step (``triton.testing.do_bench`` on CUDA: median, p20, p80);
* end-to-end wall time per step, synchronized, so Python overhead is included;
* host time of ``step()`` without a sync (dispatch cost; compare with device time);
* kernel launches per step (``torch.profiler`` CUDA kernel events; "n/a" on the CPU);
* achieved bandwidth from the minimum bytes moved, as a fraction of the device's
  measured device-to-device copy bandwidth, and the speed-up over ``torch`` fused.

Minimum bytes per parameter per step (``bytes_per_param``), with P, G, S the item sizes of
param, grad (= param dtype) and optimizer state and k = 2 states (3 with AMSGrad)::

    B = 2·P (read + write param) + G (read grad) + 2·k·S (read + write each state)

    fp32 params, fp32 states           : 8 + 4 + 16 = 28 B   (AMSGrad: 36 B)
    bf16 params/grads, fp32 states     : 4 + 2 + 16 = 22 B   (AMSGrad: 30 B)
    bf16 params/grads, bf16 states     : 4 + 2 +  8 = 14 B   (AMSGrad: 18 B)

Rows use the state the implementation actually keeps (read back from ``opt.state``), so
torch's AdamW on bf16 params is charged 14 B/param while ``fused_mup`` with fp32 states
is charged 22 B/param.

``--smoke`` runs the same code on tiny versions of every workload on the CPU in seconds;
CPU numbers say nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import gc
import importlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BenchConfig",
    "BuildContext",
    "GroupSpec",
    "Impl",
    "Row",
    "Workload",
    "bytes_per_param",
    "default_impls",
    "gpt2_workload",
    "llama_workload",
    "main",
    "make_params",
    "many_small_workload",
    "measure_copy_bandwidth",
    "run",
    "workloads",
]

SMOKE_NOTE = (
    "NOTE: smoke mode runs tiny workloads on the CPU. CPU numbers say nothing about GPU "
    "speed; this mode only checks that the benchmark still runs."
)
BASE_LR = 1e-4
BASE_WD = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
# μP base width: hidden matrices get lr_mult = BASE_WIDTH / width.
BASE_WIDTH = 256


# Small enough that every workload's random grads are clipped.
CLIP_NORM = 1.0

# --------------------------------------------------------------------------- byte model


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


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class GroupSpec:
    """One μP parameter group: tensor shapes and the per-group multipliers."""

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
    groups: tuple[GroupSpec, ...]
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
        p = _dtype_name(self.param_dtype)
        s = _dtype_name(self.state_dtype or self.param_dtype)
        return p if p == s else f"{p}/{s}"

    def estimate_bytes(self, amsgrad: bool = False) -> int:
        """Device memory for params + grads + the largest state + foreach temporaries."""
        p = torch.empty((), dtype=self.param_dtype).element_size()
        s = max(torch.empty((), dtype=self.state_dtype or self.param_dtype).element_size(), p)
        # Foreach/compiled baselines allocate about two state-sized temporaries.
        per = 2 * p + (3 if amsgrad else 2) * s + 2 * s
        return self.numel * per


def _dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dt, str(dt).removeprefix("torch.")
    )


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
    """
    attn = [(d, 3 * d), (d, d)] * n_layers
    mlp = [(d, 4 * d), (4 * d, d)] * n_layers
    bias = [(3 * d,), (d,), (4 * d,), (d,)] * n_layers
    norm = [(d,)] * (4 * n_layers + 2)
    hidden = BASE_WIDTH / d
    groups = (
        GroupSpec("embedding", ((vocab, d), (ctx, d)), 1.0, 1.0),
        GroupSpec("attn", tuple(attn), hidden, 1.0),
        GroupSpec("mlp", tuple(mlp), hidden, 1.0),
        GroupSpec("bias", tuple(bias), 1.0, 0.0),
        GroupSpec("norm", tuple(norm), 1.0, 0.0),
    )
    desc = description or f"GPT-2 d={d} L={n_layers} vocab={vocab} ctx={ctx}"
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
        GroupSpec("embedding", ((vocab, d),), 1.0, 1.0),
        GroupSpec("attn", tuple(attn), hidden, 1.0),
        GroupSpec("mlp", tuple(mlp), hidden, 1.0),
        GroupSpec("norm", tuple(norm), 1.0, 0.0),
    )
    desc = description or (
        f"Llama d={d} L={n_layers} ffn={ffn} vocab={vocab} heads={n_heads}/{n_kv_heads}"
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
        GroupSpec(f"g{k}", tuple(s), lr_mult=1.0 / (1 + k), wd_mult=0.0 if k % 2 else 1.0)
        for k, s in enumerate(shapes)
    )
    desc = f"{n_tensors} tensors of {min_numel}-{max_numel} elements in {n_groups} groups"
    return Workload(name, desc, groups, dtype, None)


def workloads(smoke: bool = False) -> dict[str, Workload]:
    """All workloads by name; ``smoke=True`` gives tiny versions with the same names."""
    if smoke:
        # One layer and few tensors: under TRITON_INTERPRET=1 each fused_mup step costs
        # ~10 ms per tensor, and the smoke run must stay within seconds.
        ws = [
            gpt2_workload("gpt2-124m", 32, 1, vocab=256, ctx=64),
            gpt2_workload("gpt2-350m", 48, 1, vocab=256, ctx=64),
            gpt2_workload("gpt2-1.3b", 64, 1, vocab=256, ctx=64),
            llama_workload("llama-1b", 32, 1, 128, 256, 4, 2),
            llama_workload("llama-3b", 48, 1, 128, 256, 4, 2),
            many_small_workload("many-small", 32, 8, 64, 512),
        ]
        ws = [dataclasses.replace(w, description="smoke: " + w.description) for w in ws]
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


# Subset for a bounded run (bench/gpu_check.sh has 10 minutes in all).
QUICK_WORKLOADS = ("gpt2-124m", "gpt2-1.3b", "llama-1b", "many-small")


# --------------------------------------------------------------------------- implementations


@dataclass
class BuildContext:
    """What an implementation needs to build its optimizer for one workload."""

    workload: Workload
    groups: list[dict[str, Any]]  # [{"params", "lr_mult", "wd_mult"}]
    device: torch.device
    amsgrad: bool
    smoke: bool


@dataclass
class Impl:
    """One AdamW implementation in the registry.

    ``build`` returns ``(optimizer, step_fn)``; ``check`` returns ``None`` when usable or
    a short reason when not (e.g. "not importable").
    """

    name: str
    description: str
    build: Callable[[BuildContext], tuple[Any, Callable[[], Any]]]
    check: Callable[[torch.device], str | None] = lambda device: None
    applies: Callable[[Workload], bool] = lambda w: True
    cleanup: Callable[[], None] | None = None  # frees what outlives the optimizer
    # Bytes per param that this implementation's step moves beyond the AdamW minimum counted
    # from its state (extra passes such as clipping; negative where a read is avoided).
    extra_bytes: Callable[[Workload], float] = lambda w: 0.0


def _torch_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    """μP multipliers folded into plain per-group lr / weight_decay for torch-style APIs."""
    return [
        {
            "params": g["params"],
            "lr": BASE_LR * g["lr_mult"],
            "weight_decay": BASE_WD * g["wd_mult"],
        }
        for g in ctx.groups
    ]


def _fused_mup_check(device: torch.device) -> str | None:
    try:
        mod = importlib.import_module("fused_mup.optim")
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
        return f"not importable ({type(e).__name__}: {e})"
    if not callable(getattr(mod.AdamW, "step", None)):
        return "placeholder (fused_mup.AdamW has no step yet)"
    return None


def fused_mup_backend(device: torch.device) -> str:
    """Backend the benchmark asks of fused_mup: Triton interpreter on CPU if enabled."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "auto"


def _fused_mup_builder(
    state_from_workload: bool, bf16_update: str = "round", clip: bool = False
) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
        from fused_mup.optim import AdamW

        state_dtype = ctx.workload.state_dtype if state_from_workload else None
        opt = AdamW(
            [dict(g) for g in ctx.groups],
            lr=BASE_LR,
            betas=BETAS,
            eps=EPS,
            weight_decay=BASE_WD,
            amsgrad=ctx.amsgrad,
            backend=fused_mup_backend(ctx.device),
            state_dtype=state_dtype,
            bf16_update=bf16_update,
        )
        if not clip:
            return opt, opt.step

        def clip_and_step() -> None:
            opt.clip_grad_norm_(CLIP_NORM)
            opt.step()

        return opt, clip_and_step

    return build


def _torch_fused_clip_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    opt = torch.optim.AdamW(
        _torch_groups(ctx), lr=BASE_LR, betas=BETAS, eps=EPS, amsgrad=ctx.amsgrad, fused=True
    )
    params = [p for g in ctx.groups for p in g["params"]]

    def clip_and_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
        opt.step()

    return opt, clip_and_step


def _grad_bytes(w: Workload) -> int:
    return torch.empty((), dtype=w.param_dtype).element_size()


def _bf16(w: Workload) -> bool:
    return w.param_dtype == torch.bfloat16


def _torch_builder(**kw: Any) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
        opt = torch.optim.AdamW(
            _torch_groups(ctx), lr=BASE_LR, betas=BETAS, eps=EPS, amsgrad=ctx.amsgrad, **kw
        )
        return opt, opt.step

    return build


def _compile_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    # Dynamo's recompile limit is per code object and Optimizer.step is shared by every
    # instance; without a reset, later workloads silently fall back to eager.
    torch._dynamo.reset()
    opt = torch.optim.AdamW(
        _torch_groups(ctx), lr=BASE_LR, betas=BETAS, eps=EPS, amsgrad=ctx.amsgrad, foreach=True
    )

    @torch.compile(fullgraph=False)
    def step() -> None:
        opt.step()

    return opt, step


def _import_check(module: str, cuda_only: bool) -> Callable[[torch.device], str | None]:
    def check(device: torch.device) -> str | None:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - report why, keep going
            return f"not importable ({type(e).__name__})"
        if cuda_only and device.type != "cuda":
            return "needs CUDA"
        return None

    return check


def _apex_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    from apex.optimizers import FusedAdam

    opt = FusedAdam(
        _torch_groups(ctx),
        lr=BASE_LR,
        betas=BETAS,
        eps=EPS,
        adam_w_mode=True,
        amsgrad=ctx.amsgrad,
    )
    return opt, opt.step


def _te_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    from transformer_engine.pytorch.optimizers import FusedAdam

    state = ctx.workload.state_dtype or ctx.workload.param_dtype
    kw: dict[str, Any] = dict(lr=BASE_LR, betas=BETAS, eps=EPS, adam_w_mode=True)
    try:
        opt = FusedAdam(_torch_groups(ctx), amsgrad=ctx.amsgrad, exp_avg_dtype=state,
                        exp_avg_sq_dtype=state, **kw)  # fmt: skip
    except TypeError:  # TE releases before the state-dtype options: states as params
        opt = FusedAdam(_torch_groups(ctx), amsgrad=ctx.amsgrad, **kw)
    return opt, opt.step


def _optimi_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    import optimi

    if ctx.amsgrad:
        raise NotImplementedError("optimi has no AMSGrad")
    # optimi's default weight decay is torch-compatible (decouple_lr=False) and enables
    # Kahan summation for bf16 params: its extra state is counted in the bytes.
    opt = optimi.AdamW(_torch_groups(ctx), lr=BASE_LR, betas=BETAS, eps=EPS)
    return opt, opt.step


def _mixed(w: Workload) -> bool:
    return w.state_dtype is not None and w.state_dtype != w.param_dtype


def default_impls() -> list[Impl]:
    """The implementation registry, in table order; fused_mup first, torch fused is the
    reference for speed-ups."""
    return [
        Impl("fused_mup", "fused_mup.AdamW (workload's state dtype)", _fused_mup_builder(True),
             _fused_mup_check),
        Impl("fused_mup:pstate", "fused_mup.AdamW, states in param dtype (like torch)",
             _fused_mup_builder(False), _fused_mup_check, applies=_mixed),
        # bf16 update modes: Kahan adds a bf16 compensation read + write (+4 B, counted from
        # state); master reads fp32 master weights instead of the bf16 param (-2 B beside the
        # +8 B of the master state counted from state).
        Impl("fused_mup:kahan", "fused_mup.AdamW(bf16_update='kahan')",
             _fused_mup_builder(True, "kahan"), _fused_mup_check, applies=_bf16),
        Impl("fused_mup:stochastic", "fused_mup.AdamW(bf16_update='stochastic')",
             _fused_mup_builder(True, "stochastic"), _fused_mup_check, applies=_bf16),
        Impl("fused_mup:master", "fused_mup.AdamW(bf16_update='master')",
             _fused_mup_builder(True, "master"), _fused_mup_check, applies=_bf16,
             extra_bytes=lambda w: -_grad_bytes(w)),
        # Clipping: fused is one extra read of the grads (+G); torch's clip_grad_norm_ reads
        # them for the norm and reads + writes them to scale (+3G).
        Impl("fused_mup+clip", "fused_mup clip_grad_norm_ + step",
             _fused_mup_builder(True, clip=True), _fused_mup_check, extra_bytes=_grad_bytes),
        Impl("torch_fused+clip", "clip_grad_norm_(foreach) + AdamW(fused=True)",
             _torch_fused_clip_build, extra_bytes=lambda w: 3 * _grad_bytes(w)),
        Impl("torch_foreach", "torch.optim.AdamW(foreach=True)", _torch_builder(foreach=True)),
        Impl("torch_fused", "torch.optim.AdamW(fused=True)", _torch_builder(fused=True)),
        Impl("apex", "apex.optimizers.FusedAdam", _apex_build,
             _import_check("apex.optimizers", cuda_only=True)),
        Impl("te", "transformer_engine FusedAdam", _te_build,
             _import_check("transformer_engine.pytorch.optimizers", cuda_only=True)),
        Impl("optimi", "optimi.AdamW (foreach)", _optimi_build,
             _import_check("optimi", cuda_only=False)),
        # Last: compiling can take minutes, so a time budget cuts it first.
        Impl("torch_compile", "torch.compile'd AdamW(foreach=True).step", _compile_build,
             cleanup=lambda: torch._dynamo.reset()),  # compiled graphs keep the state tensors alive
    ]  # fmt: skip


REFERENCE_IMPL = "torch_fused"


# --------------------------------------------------------------------------- measurement


@dataclass
class BenchConfig:
    """Run settings; ``main`` builds one from the command line."""

    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    smoke: bool = False
    workloads: Sequence[str] | None = None  # None: all
    impls: Sequence[str] | None = None  # None: all
    skip: Sequence[str] = ()
    out: Path | None = None
    amsgrad: bool = False
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    wall_reps: int = 20
    warmup_steps: int = 3
    profile_steps: int = 3
    copy_bytes: int = 1 << 30
    budget_s: float | None = None
    compile_max_tensors: int | None = None  # compile time grows with the tensor count
    plot: bool = True
    progress: bool = True
    seed: int = 0


@dataclass
class Row:
    """One workload × implementation result (times in ms, bandwidth in GB/s)."""

    workload: str
    impl: str
    status: str  # "ok", or why it did not run
    numel: int = 0
    n_tensors: int = 0
    n_groups: int = 0
    mode: str = ""
    state_dtype: str = ""
    bytes_per_param: float | None = None
    device_ms: float | None = None
    device_p20_ms: float | None = None
    device_p80_ms: float | None = None
    e2e_ms: float | None = None
    e2e_p20_ms: float | None = None
    e2e_p80_ms: float | None = None
    host_ms: float | None = None
    launches: float | None = None
    gbps: float | None = None
    frac_copy: float | None = None
    speedup_device: float | None = None
    speedup_e2e: float | None = None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    """Median, p20, p80 (same convention as do_bench's quantiles)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return statistics.median(xs), q[1], q[7]


def _wall_times(fn: Callable[[], Any], device: torch.device, reps: int) -> list[float]:
    """Per-call wall time in ms with a sync before and after each call."""
    out = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _host_times(fn: Callable[[], Any], device: torch.device, reps: int) -> list[float]:
    """Host time of the call alone: queue drained before, no sync inside the timing."""
    out = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    _sync(device)
    return out


def _device_time(fn: Callable[[], Any], device: torch.device, cfg: BenchConfig) -> tuple:
    """Device time per call in ms: (median, p20, p80)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(
            fn, warmup=cfg.warmup_ms, rep=cfg.rep_ms, quantiles=[0.5, 0.2, 0.8]
        )
        return med, p20, p80
    # CPU: the step is synchronous, so wall time is the "device" time.
    return _quantiles(_wall_times(fn, device, cfg.wall_reps))


def _count_launches(fn: Callable[[], Any], device: torch.device, steps: int) -> float | None:
    """CUDA kernel launches per call, from torch.profiler kernel events (None on CPU)."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        _sync(device)
    events = prof.events()
    # GPU-side copies of record_function ranges (e.g. "Optimizer.step#AdamW.step") carry
    # the CPU range's name; only needed where events have no activity_type.
    cpu_names = {e.name for e in events if e.device_type == DeviceType.CPU}
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and _is_kernel(e, cpu_names)]
    return len(kernels) / steps


def _is_kernel(evt: Any, cpu_names: set[str]) -> bool:
    """A device event that is a kernel launch (not a memcpy, memset, sync or annotation)."""
    kind = getattr(evt, "activity_type", None)
    if isinstance(kind, str) and kind:
        return kind.lower() == "kernel"  # kineto: "kernel" (some builds "Kernel"), "gpu_memcpy"
    name = evt.name
    return (
        not name.startswith(("Memcpy", "Memset")) and "Sync" not in name and (name not in cpu_names)
    )


def measure_copy_bandwidth(device: torch.device, nbytes: int, cfg: BenchConfig) -> dict:
    """Device-to-device copy bandwidth in GB/s, counting read + write (2 × nbytes).

    Args:
        device: Where to copy.
        nbytes: Buffer size (1 GiB on GPU by default).
        cfg: Timing settings.

    Returns:
        ``{"bytes", "ms", "p20_ms", "p80_ms", "gbps"}``.
    """
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    fn = lambda: dst.copy_(src)
    fn()
    med, p20, p80 = _device_time(fn, device, cfg)
    return {
        "bytes": n * 4,
        "ms": med,
        "p20_ms": p20,
        "p80_ms": p80,
        "gbps": 2 * n * 4 / (med * 1e-3) / 1e9,
    }


def make_params(w: Workload, device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
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


def _traffic_bytes(opt: Any, params: list[torch.Tensor], w: Workload, amsgrad: bool) -> int:
    """Minimum bytes per step given the state the optimizer actually keeps.

    ``2·P + G`` per param plus read + write of every param-sized state tensor found in
    ``opt.state``; falls back to ``bytes_per_param`` with the workload's state dtype when
    an optimizer keeps its state elsewhere.
    """
    state = getattr(opt, "state", {})
    total = 0
    for p in params:
        base = 2 * p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size()
        st = state.get(p) if hasattr(state, "get") else None
        s_bytes = 0
        if st:
            s_bytes = sum(
                t.numel() * t.element_size()
                for t in st.values()
                if torch.is_tensor(t) and t.numel() == p.numel() and t.numel() > 1
            )
        if s_bytes == 0:
            per = bytes_per_param(w.param_dtype, w.state_dtype, amsgrad)
            total += p.numel() * per
        else:
            total += base + 2 * s_bytes
    return total


def _state_dtype_name(opt: Any, params: list[torch.Tensor], w: Workload) -> str:
    state = getattr(opt, "state", {})
    st = state.get(params[0]) if params and hasattr(state, "get") else None
    for key in ("exp_avg", "exp_avg_sq"):
        if st and torch.is_tensor(st.get(key)):
            return _dtype_name(st[key].dtype)
    return _dtype_name(w.state_dtype or w.param_dtype) + "?"


def _free_device_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return None


def _bench_one(
    impl: Impl, w: Workload, groups: list[dict], device: torch.device, cfg: BenchConfig
) -> Row:
    params = [p for g in groups for p in g["params"]]
    row = Row(w.name, impl.name, "ok", w.numel, w.n_tensors, len(w.groups), w.mode)
    ctx = BuildContext(
        w,
        [{k: v for k, v in g.items() if k != "name"} for g in groups],
        device,
        cfg.amsgrad,
        cfg.smoke,
    )
    opt = step = None
    try:
        opt, step = impl.build(ctx)
        # Warm-up: creates state, compiles (torch.compile / Triton JIT).
        for _ in range(cfg.warmup_steps):
            step()
        _sync(device)
        row.state_dtype = _state_dtype_name(opt, params, w)
        row.bytes_per_param = _traffic_bytes(
            opt, params, w, cfg.amsgrad
        ) / w.numel + impl.extra_bytes(w)
        if device.type == "cuda":
            row.device_ms, row.device_p20_ms, row.device_p80_ms = _device_time(step, device, cfg)
            row.e2e_ms, row.e2e_p20_ms, row.e2e_p80_ms = _quantiles(
                _wall_times(step, device, cfg.wall_reps)
            )
            row.host_ms = statistics.median(_host_times(step, device, cfg.wall_reps))
        else:
            # A CPU step is synchronous: device, end-to-end and host time are one and the
            # same measurement (and under TRITON_INTERPRET=1 each step costs ~0.3 s).
            q = _quantiles(_wall_times(step, device, cfg.wall_reps))
            row.device_ms, row.device_p20_ms, row.device_p80_ms = q
            row.e2e_ms, row.e2e_p20_ms, row.e2e_p80_ms = q
            row.host_ms = q[0]
        row.launches = _count_launches(step, device, cfg.profile_steps)
        row.gbps = row.bytes_per_param * w.numel / (row.device_ms * 1e-3) / 1e9
        if any(not torch.isfinite(p).all() for p in params[:4]):
            row.note = "non-finite params after stepping"
    except torch.OutOfMemoryError:
        row.status = "OOM"
    except Exception as e:  # noqa: BLE001 - one broken implementation must not stop the run
        row.status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    finally:
        del opt, step  # the bound step method holds the optimizer (and its states) too
        if impl.cleanup is not None:
            impl.cleanup()
        if device.type == "cuda":  # gc.collect costs ~0.2 s with torch loaded; GPU only
            gc.collect()
            torch.cuda.empty_cache()
    return row


def _progress(total: int, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc="bench", unit="run", file=sys.stderr, leave=False)


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the benchmark and return the results dict (what ``results.json`` holds).

    Args:
        cfg: What to run and where to write it (``cfg.out``; nothing written if ``None``).

    Returns:
        ``{"meta", "copy", "rows", "targets", "skipped_workloads"}``.
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available; use --smoke or --device cpu")
    all_w = workloads(cfg.smoke)
    names = list(cfg.workloads) if cfg.workloads else list(all_w)
    unknown = [n for n in names if n not in all_w]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; known: {list(all_w)}")
    impls = [i for i in default_impls() if (not cfg.impls or i.name in cfg.impls)]

    meta = environment_info(device)
    meta.update(
        smoke=cfg.smoke,
        amsgrad=cfg.amsgrad,
        fused_mup_backend=fused_mup_backend(device),
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        skipped_impls=sorted(set(cfg.skip)),
        date=_dt.date.today().isoformat(),
    )
    results: dict[str, Any] = {"meta": meta, "rows": [], "skipped_workloads": {}}
    # Smoke on CPU: one intra-op thread. The tensors are tiny, and on a shared CI box
    # two OpenMP threads fighting other jobs turned 0.2 ms steps into 100+ ms ones.
    threads = torch.get_num_threads()
    if cfg.smoke and device.type == "cpu":
        torch.set_num_threads(1)
    try:
        _run_workloads(cfg, device, results, names, all_w, impls)
    finally:
        torch.set_num_threads(threads)
    results["targets"] = evaluate_targets(results)
    if cfg.out is not None:
        write_outputs(results, Path(cfg.out), plot=cfg.plot)
    return results


def _run_workloads(
    cfg: BenchConfig,
    device: torch.device,
    results: dict[str, Any],
    names: list[str],
    all_w: dict[str, Workload],
    impls: list[Impl],
) -> None:
    results["copy"] = measure_copy_bandwidth(device, cfg.copy_bytes, cfg)
    copy_gbps = results["copy"]["gbps"]
    t_start = time.perf_counter()

    total = sum(1 for n in names for i in impls if i.applies(all_w[n]))
    with _progress(total, cfg.progress) as bar:
        for name in names:
            w = all_w[name]
            need = w.estimate_bytes(cfg.amsgrad)
            free = _free_device_bytes(device)
            w_impls = [i for i in impls if i.applies(w)]
            if free is not None and need > 0.9 * free:
                results["skipped_workloads"][name] = (
                    f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
                )
                for i in w_impls:
                    row = Row(name, i.name, "skipped: does not fit", w.numel, w.n_tensors,
                              len(w.groups), w.mode)  # fmt: skip
                    results["rows"].append(asdict(row))
                    if bar is not None:
                        bar.update()
                continue
            try:
                groups = make_params(w, device, cfg.seed)
            except torch.OutOfMemoryError:
                results["skipped_workloads"][name] = "OOM while allocating params and grads"
                gc.collect()
                torch.cuda.empty_cache()
                continue
            rows: list[Row] = []
            for impl in w_impls:
                reason = (
                    impl.check(device) if impl.name not in cfg.skip else _skip_reason(impl, cfg)
                )
                if reason is None and cfg.budget_s and time.perf_counter() - t_start > cfg.budget_s:
                    reason = f"skipped: time budget {cfg.budget_s:.0f}s spent"
                max_t = cfg.compile_max_tensors
                if reason is None and impl.name == "torch_compile" and max_t is not None:
                    if w.n_tensors > max_t:
                        reason = f"skipped: {w.n_tensors} tensors > --compile-max-tensors {max_t}"
                if reason is not None:
                    row = Row(name, impl.name, reason, w.numel, w.n_tensors, len(w.groups), w.mode)
                else:
                    if bar is not None:
                        bar.set_postfix_str(f"{name} {impl.name}")
                    row = _bench_one(impl, w, groups, device, cfg)
                rows.append(row)
                if bar is not None:
                    bar.update()
            _fill_relative(rows, copy_gbps)
            results["rows"].extend(asdict(r) for r in rows)
            del groups
            if device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            if cfg.out is not None:  # partial results survive a killed run
                results["targets"] = evaluate_targets(results)
                write_outputs(results, Path(cfg.out), plot=False)


def _skip_reason(impl: Impl, cfg: BenchConfig) -> str:
    if cfg.smoke and impl.name == "torch_compile":
        return "skipped in smoke mode (compile is slow on CPU)"
    return "skipped (--skip)"


def _fill_relative(rows: list[Row], copy_gbps: float) -> None:
    ref = next((r for r in rows if r.impl == REFERENCE_IMPL and r.status == "ok"), None)
    for r in rows:
        if r.status != "ok":
            continue
        r.frac_copy = r.gbps / copy_gbps if r.gbps and copy_gbps else None
        if ref is not None:
            r.speedup_device = ref.device_ms / r.device_ms
            r.speedup_e2e = ref.e2e_ms / r.e2e_ms


# --------------------------------------------------------------------------- targets


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's H100 targets, checked against the measured rows (never asserted)."""
    rows = {(r["workload"], r["impl"]): r for r in results["rows"] if r["status"] == "ok"}
    on_gpu = str(results["meta"]["device"]).startswith("cuda") and not results["meta"]["smoke"]
    out = []

    def add(target: str, value: float | None, ok: bool | None, unit: str = "") -> None:
        # CPU / smoke numbers say nothing about the GPU targets: show, don't judge.
        out.append({"target": target, "value": value, "unit": unit, "met": ok if on_gpu else None})

    r = rows.get(("gpt2-1.3b", "fused_mup"))
    v = r and r["frac_copy"]
    add("gpt2-1.3b fp32: >= 90% of copy bandwidth", v, None if v is None else v >= 0.9, "frac")
    for wname in ("gpt2-124m", "gpt2-350m", "gpt2-1.3b"):
        r = rows.get((wname, "fused_mup"))
        v = r and r["speedup_device"]
        add(f"{wname}: >= 1.1x torch fused (device)", v, None if v is None else v >= 1.1, "x")
    r = rows.get(("many-small", "fused_mup"))
    v = r and r["speedup_e2e"]
    add("many-small: >= 3x torch fused (end-to-end)", v, None if v is None else v >= 3.0, "x")
    for (wname, impl), r in rows.items():
        if impl == "fused_mup" and r["launches"] is not None:
            v = r["launches"]
            add(f"{wname}: 1 launch per step per dtype combo", v, v <= 1.0, "launches")
    r = rows.get(("gpt2-124m", "fused_mup"))
    if r:
        v = r["host_ms"] / r["device_ms"] if r["device_ms"] else None
        add(
            "gpt2-124m: device-bound (host step() time < device time)",
            v,
            None if v is None else v < 1.0,
            "host/device",
        )
    return out


# --------------------------------------------------------------------------- environment


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi(query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_info(device: torch.device) -> dict[str, Any]:
    """Device name, driver, library versions and git commit for ``results.json``."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_runtime=torch.version.cuda,
            driver=_nvidia_smi("driver_version"),
        )
    else:
        info.update(device_name=_cpu_name(), driver=None, cuda_runtime=torch.version.cuda)
    return info


def device_slug(meta: dict[str, Any]) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``h100-80gb-hbm3``; CPU runs -> ``cpu``."""
    if not str(meta.get("device", "")).startswith("cuda"):
        return "cpu"
    name = str(meta.get("device_name", "gpu")).lower().removeprefix("nvidia ")
    return re.sub(r"[^a-z0-9.]+", "-", name).strip("-") or "gpu"


# --------------------------------------------------------------------------- output


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


TABLE_COLUMNS = (
    "workload", "params", "tensors", "mode", "impl", "state", "B/param", "device ms",
    "p20-p80", "e2e ms", "host ms", "launches", "GB/s", "% copy", "x fused dev",
    "x fused e2e", "status",
)  # fmt: skip


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """The rows of the stdout / markdown table as strings."""
    out = []
    for r in results["rows"]:
        ok = r["status"] == "ok"
        out.append(
            [
                r["workload"],
                _human(r["numel"]) if r["numel"] else "-",
                str(r["n_tensors"] or "-"),
                r["mode"] or "-",
                r["impl"],
                r["state_dtype"] or "-",
                _fmt(r["bytes_per_param"], ".1f"),
                _fmt(r["device_ms"], ".3f"),
                f"{r['device_p20_ms']:.3f}-{r['device_p80_ms']:.3f}" if ok else "-",
                _fmt(r["e2e_ms"], ".3f"),
                _fmt(r["host_ms"], ".3f"),
                ("n/a" if r["launches"] is None else f"{r['launches']:g}") if ok else "-",
                _fmt(r["gbps"], ".1f"),
                _fmt(r["frac_copy"] and 100 * r["frac_copy"], ".1f"),
                _fmt(r["speedup_device"], ".2f"),
                _fmt(r["speedup_e2e"], ".2f"),
                r["status"] + (f" ({r['note']})" if r.get("note") else ""),
            ]
        )
    return out


def format_text_table(results: dict[str, Any]) -> str:
    """Fixed-width table for stdout, with the header lines that say what was measured."""
    meta, copy = results["meta"], results["copy"]
    rows = table_rows(results)
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
        for i, c in enumerate(TABLE_COLUMNS)
    ]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
    head = [
        f"device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
        f"triton {meta['triton']}, commit {meta['git_commit']}",
        f"copy bandwidth: {copy['gbps']:.1f} GB/s ({copy['bytes'] / 2**20:.0f} MiB "
        "dst.copy_(src), read+write counted)",
        f"fused_mup backend: {meta['fused_mup_backend']}"
        + (
            " (Triton interpreter, TRITON_INTERPRET=1)"
            if meta["fused_mup_backend"] == "triton"
            else " (Triton on CUDA, plain torch on CPU)"
        ),
    ]
    if meta["smoke"]:
        head.insert(0, SMOKE_NOTE)
    if meta["skipped_impls"]:
        head.append(f"skipped by request: {', '.join(meta['skipped_impls'])}")
    for name, why in results["skipped_workloads"].items():
        head.append(f"workload {name} skipped: {why}")
    body = [line(TABLE_COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in rows]
    body = [b.rstrip() for b in body]
    judged = meta["device"].startswith("cuda") and not meta["smoke"]
    tail = [
        "",
        "targets (H100; shown, not asserted" + ("" if judged else "; not judged on CPU") + "):",
    ]
    for t in results.get("targets", []):
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        tail.append(f"  [{mark:>7}] {t['target']}: {_fmt(t['value'], '.3g')} {t['unit']}")
    if meta["smoke"]:
        tail.append(SMOKE_NOTE)
    return "\n".join(head + [""] + body + tail)


def format_markdown(results: dict[str, Any]) -> str:
    """``results.md``: environment, byte model and the table."""
    meta, copy = results["meta"], results["copy"]
    lines = [f"# fused_mup AdamW benchmark — {meta['device_name']} — {meta['date']}", ""]
    if meta["smoke"]:
        lines += [f"> {SMOKE_NOTE}", ""]
    lines += [
        f"- device: `{meta['device_name']}`, driver `{meta['driver']}`, "
        f"CUDA `{meta['cuda_runtime']}`",
        f"- torch `{meta['torch']}`, triton `{meta['triton']}`, commit `{meta['git_commit']}`",
        f"- copy bandwidth: **{copy['gbps']:.1f} GB/s** "
        f"({copy['bytes'] / 2**20:.0f} MiB `dst.copy_(src)`, 2 × bytes)",
        f"- fused_mup backend: `{meta['fused_mup_backend']}`",
        "- bytes/param = 2·P + G + 2·k·S (k = 2 states, 3 with AMSGrad): "
        "fp32 28, bf16/fp32 22, bf16 14",
        "- device time: `triton.testing.do_bench` median (p20–p80); e2e: synchronized wall "
        "time per step; host: `step()` without sync; x fused: speed-up over torch fused",
        "",
    ]
    lines.append("| " + " | ".join(TABLE_COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in TABLE_COLUMNS) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    if results["skipped_workloads"]:
        lines += ["", "Skipped workloads:", ""]
        lines += [f"- {k}: {v}" for k, v in results["skipped_workloads"].items()]
    lines += ["", "## Targets (shown, not asserted)", ""]
    for t in results.get("targets", []):
        mark = {True: "met", False: "**not met**", None: "n/a"}[t["met"]]
        lines.append(f"- {t['target']}: {_fmt(t['value'], '.3g')} {t['unit']} — {mark}")
    return "\n".join(lines) + "\n"


def plot_bandwidth(results: dict[str, Any], path: Path) -> Path | None:
    """PNG of achieved bandwidth vs param count, one line per implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless; no display on CI or GPU boxes
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results["rows"]:
        if r["status"] == "ok" and r["gbps"]:
            series.setdefault(r["impl"], []).append((r["numel"], r["gbps"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(results["copy"]["gbps"], color="k", ls="--", lw=1, label="copy bandwidth")
    ax.set_xscale("log")
    # Name the workloads along the top: lines join fp32 and bf16/fp32 workloads.
    ticks = sorted({(r["numel"], r["workload"]) for r in results["rows"] if r["numel"]})
    if ticks:
        top = ax.secondary_xaxis("top")
        top.set_xticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=7, rotation=30)
        top.minorticks_off()
    ax.set_xlabel("parameters")
    ax.set_ylabel("achieved bandwidth (GB/s, minimum bytes)")
    title = f"AdamW step bandwidth — {results['meta']['device_name']}"
    ax.set_title(title + (" (smoke: CPU, meaningless)" if results["meta"]["smoke"] else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _write_json(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def write_outputs(results: dict[str, Any], out: Path, plot: bool = True) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``bandwidth.png`` into ``out``."""
    paths = [_write_json(results, out)]
    md = out / "results.md"
    md.write_text(format_markdown(results))
    paths.append(md)
    if plot and (png := plot_bandwidth(results, out / "bandwidth.png")) is not None:
        paths.append(png)
    return paths


def default_out_dir(meta: dict[str, Any]) -> Path:
    """``bench/results/<gpu-slug>-<YYYY-MM-DD>/`` (``cpu-smoke-...`` for smoke runs)."""
    slug = device_slug(meta) + ("-smoke" if meta.get("smoke") else "")
    return Path("bench") / "results" / f"{slug}-{meta['date']}"


# --------------------------------------------------------------------------- CLI


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for ``fused-mup bench``."""
    impl_names = [i.name for i in default_impls()]
    p = argparse.ArgumentParser(
        prog="fused-mup bench",
        description="AdamW step benchmark: fused_mup vs torch foreach/fused/compile, apex, "
        "TransformerEngine, optimi.",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny workloads on the CPU in seconds (CI); numbers mean nothing",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"bounded run: workloads {','.join(QUICK_WORKLOADS)}, shorter timing",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument(
        "--workloads",
        type=_csv,
        default=None,
        help="comma list (default all): " + ",".join(workloads(False)),
    )
    p.add_argument(
        "--impls", type=_csv, default=None, help="comma list (default all): " + ",".join(impl_names)
    )
    p.add_argument(
        "--skip",
        type=_csv,
        default=[],
        help="implementations to skip, e.g. 'compile' or 'torch_compile'",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output dir (default bench/results/<gpu>-<date>/)"
    )
    p.add_argument("--amsgrad", action="store_true", help="benchmark the AMSGrad variant")
    p.add_argument("--rep-ms", type=float, default=None, help="do_bench rep time (ms)")
    p.add_argument("--wall-reps", type=int, default=None, help="steps for e2e/host timing")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting new runs after this many seconds (rows say so)",
    )
    p.add_argument(
        "--compile-max-tensors",
        type=int,
        default=None,
        help="skip torch_compile on workloads with more tensors (compile time)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip bandwidth.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed CLI args into a ``BenchConfig`` (smoke/quick set smaller defaults)."""
    impl_names = {i.name for i in default_impls()}
    skip = set()
    for s in args.skip:
        if s in ("compile", "torch.compile"):
            s = "torch_compile"
        if s not in impl_names:
            raise SystemExit(f"--skip: unknown implementation {s!r}; known: {sorted(impl_names)}")
        skip.add(s)
    cfg = BenchConfig(
        skip=sorted(skip),
        amsgrad=args.amsgrad,
        plot=not args.no_plot,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    if args.impls:
        bad = set(args.impls) - impl_names
        if bad:
            raise SystemExit(f"--impls: unknown {sorted(bad)}; known: {sorted(impl_names)}")
        cfg.impls = list(args.impls)
    if args.smoke:
        cfg.smoke, cfg.device = True, args.device or "cpu"
        cfg.wall_reps, cfg.warmup_steps, cfg.profile_steps = 3, 1, 1
        cfg.copy_bytes = 32 << 20
        # torch.compile of an optimizer step takes ~20 s per workload on a small CPU.
        if not args.impls or "torch_compile" not in args.impls:
            cfg.skip = sorted({*cfg.skip, "torch_compile"})
    elif args.device:
        cfg.device = args.device
    if args.quick:
        cfg.workloads = list(QUICK_WORKLOADS)
        cfg.rep_ms, cfg.warmup_ms, cfg.wall_reps = 50.0, 10.0, 10
    if args.workloads:
        cfg.workloads = list(args.workloads)
    if args.rep_ms is not None:
        cfg.rep_ms = args.rep_ms
    if args.wall_reps is not None:
        cfg.wall_reps = args.wall_reps
    cfg.budget_s = args.budget_s
    cfg.compile_max_tensors = args.compile_max_tensors
    cfg.out = args.out
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``fused-mup bench``: run, print the table, write JSON/markdown/PNG.

    Args:
        argv: Arguments after ``bench`` (default: ``sys.argv[1:]``).

    Returns:
        Process exit code (0 on success, even when some implementations are missing).
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config_from_args(args)
    if cfg.smoke:
        if "torch_compile" in cfg.skip and "torch_compile" not in args.skip:
            print(
                "torch_compile skipped in smoke mode (compiling takes ~20 s per workload on "
                "the CPU); run with --smoke --impls torch_compile to include it.",
                flush=True,
            )
    if cfg.out is None:
        meta = {"device": cfg.device, "smoke": cfg.smoke, "date": _dt.date.today().isoformat()}
        if cfg.device.startswith("cuda") and torch.cuda.is_available():
            meta["device_name"] = torch.cuda.get_device_name(torch.device(cfg.device))
        cfg.out = default_out_dir(meta)
    results = run(cfg)
    print(format_text_table(results))
    print(
        f"\nwrote {cfg.out}/results.json, results.md" + ("" if not cfg.plot else ", bandwidth.png")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
