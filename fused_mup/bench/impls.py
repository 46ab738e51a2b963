"""The AdamW implementations the bench times: ``fused_mup`` variants and the baselines.

Every implementation gets the same μP groups: ``fused_mup`` as ``lr_mult`` / ``wd_mult``
group keys, the others with the multipliers folded into each group's ``lr`` /
``weight_decay``, so all do the same math. ``torch_fused`` is the baseline that
speed-ups are measured against.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fused_mup import AdamW
from fused_mup.bench.workloads import Workload

__all__ = [
    "BASELINE_IMPL",
    "BuildContext",
    "Impl",
    "default_impls",
    "fused_mup_backend",
    "torch_groups",
]

BASE_LR = 1e-4
BASE_WD = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
# Small enough that every workload's random grads are clipped.
CLIP_NORM = 1.0
# The speed baseline: every "x fused" figure is relative to it.
BASELINE_IMPL = "torch_fused"


@dataclass
class BuildContext:
    """What an implementation needs to build its optimizer for one workload."""

    workload: Workload
    groups: list[dict[str, Any]]  # [{"params", "lr_mult", "wd_mult"}]
    device: torch.device
    amsgrad: bool = False
    backend: str | None = None  # fused_mup's backend; None: fused_mup_backend(device)


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


def torch_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """μP multipliers folded into plain per-group lr / weight_decay for torch-style APIs."""
    return [
        {
            "params": g["params"],
            "lr": BASE_LR * g["lr_mult"],
            "weight_decay": BASE_WD * g["wd_mult"],
        }
        for g in groups
    ]


def fused_mup_backend(device: torch.device) -> str:
    """Backend the bench asks of fused_mup: Triton interpreter on CPU if enabled."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "auto"


def _scaler(device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that has scaled a loss, at scale 1 and never growing: unscaling leaves the
    fixed grads as they are, so every step does the same work."""
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2**30)
    scaler.scale(torch.ones((), device=device))  # creates the scale tensor
    return scaler


def _fused_mup_builder(
    state_from_workload: bool, bf16_update: str = "round", clip: bool = False, amp: bool = False
) -> Callable[[BuildContext], Any]:
    def build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
        state_dtype = ctx.workload.state_dtype if state_from_workload else None
        opt = AdamW(
            [dict(g) for g in ctx.groups],
            lr=BASE_LR,
            betas=BETAS,
            eps=EPS,
            weight_decay=BASE_WD,
            amsgrad=ctx.amsgrad,
            backend=ctx.backend or fused_mup_backend(ctx.device),
            state_dtype=state_dtype,
            bf16_update=bf16_update,
        )
        if amp:
            scaler = _scaler(ctx.device)

            def full_step() -> None:
                # The norm pass is also GradScaler's inf check; the kernel unscales.
                opt.clip_grad_norm_(CLIP_NORM, grad_scaler=scaler)
                scaler.step(opt)
                scaler.update()

            return opt, full_step
        if not clip:
            return opt, opt.step

        def clip_and_step() -> None:
            opt.clip_grad_norm_(CLIP_NORM)
            opt.step()

        return opt, clip_and_step

    return build


def _torch_builder(clip: bool = False, amp: bool = False, **kw: Any) -> Callable:
    def build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
        opt = torch.optim.AdamW(
            torch_groups(ctx.groups), lr=BASE_LR, betas=BETAS, eps=EPS, amsgrad=ctx.amsgrad, **kw
        )
        params = [p for g in ctx.groups for p in g["params"]]
        if amp:
            scaler = _scaler(ctx.device)

            def full_step() -> None:  # torch's documented AMP + clipping sequence
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
                scaler.step(opt)
                scaler.update()

            return opt, full_step
        if not clip:
            return opt, opt.step

        def clip_and_step() -> None:
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
            opt.step()

        return opt, clip_and_step

    return build


def _compile_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    # Dynamo's recompile limit is per code object and Optimizer.step is shared by every
    # instance; without a reset, later workloads silently fall back to eager.
    torch.compiler.reset()
    opt = torch.optim.AdamW(
        torch_groups(ctx.groups), lr=BASE_LR, betas=BETAS, eps=EPS, amsgrad=ctx.amsgrad,
        foreach=True,
    )  # fmt: skip

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
    FusedAdam = importlib.import_module("apex.optimizers").FusedAdam
    opt = FusedAdam(torch_groups(ctx.groups), lr=BASE_LR, betas=BETAS, eps=EPS,
                    adam_w_mode=True, amsgrad=ctx.amsgrad)  # fmt: skip
    return opt, opt.step


def _te_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    FusedAdam = importlib.import_module("transformer_engine.pytorch.optimizers").FusedAdam
    state = ctx.workload.state_dtype or ctx.workload.param_dtype
    kw: dict[str, Any] = dict(lr=BASE_LR, betas=BETAS, eps=EPS, adam_w_mode=True)
    try:
        opt = FusedAdam(torch_groups(ctx.groups), amsgrad=ctx.amsgrad, exp_avg_dtype=state,
                        exp_avg_sq_dtype=state, **kw)  # fmt: skip
    except TypeError:  # TE releases before the state-dtype options: states as params
        opt = FusedAdam(torch_groups(ctx.groups), amsgrad=ctx.amsgrad, **kw)
    return opt, opt.step


def _optimi_build(ctx: BuildContext) -> tuple[Any, Callable[[], Any]]:
    optimi = importlib.import_module("optimi")
    if ctx.amsgrad:
        raise NotImplementedError("optimi has no AMSGrad")
    # optimi's default weight decay is torch-compatible (decouple_lr=False) and enables
    # Kahan summation for bf16 params: its extra state is counted in the bytes.
    opt = optimi.AdamW(torch_groups(ctx.groups), lr=BASE_LR, betas=BETAS, eps=EPS)
    return opt, opt.step


def _grad_bytes(w: Workload) -> int:
    return torch.empty((), dtype=w.param_dtype).element_size()


def _bf16(w: Workload) -> bool:
    return w.param_dtype == torch.bfloat16


def _mixed(w: Workload) -> bool:
    return w.state_dtype is not None and w.state_dtype != w.param_dtype


def default_impls() -> list[Impl]:
    """The implementation registry, in run and table order: what the GPU targets compare
    first (so a time budget cuts the extras, not them), torch_compile last."""
    return [
        Impl("fused_mup", "fused_mup.AdamW (workload's state dtype)", _fused_mup_builder(True)),
        Impl(BASELINE_IMPL, "torch.optim.AdamW(fused=True)", _torch_builder(fused=True)),
        # The full mixed-precision step: unscale + inf check + clip + AdamW. Fused: one norm
        # pass that is also the inf check (+G); torch: unscale_ reads + writes the grads with
        # its inf check (+2G), then clipping (+3G).
        Impl("fused_mup+amp+clip", "clip_grad_norm_(grad_scaler=) + scaler.step + update",
             _fused_mup_builder(True, amp=True), extra_bytes=_grad_bytes),
        Impl("torch_fused+amp+clip", "unscale_ + clip_grad_norm_ + scaler.step + update",
             _torch_builder(amp=True, fused=True), extra_bytes=lambda w: 5 * _grad_bytes(w)),
        Impl("torch_foreach", "torch.optim.AdamW(foreach=True)", _torch_builder(foreach=True)),
        # Clipping: fused is one extra read of the grads (+G); torch's clip_grad_norm_ reads
        # them for the norm and reads + writes them to scale (+3G).
        Impl("fused_mup+clip", "fused_mup clip_grad_norm_ + step",
             _fused_mup_builder(True, clip=True), extra_bytes=_grad_bytes),
        Impl("torch_fused+clip", "clip_grad_norm_(foreach) + AdamW(fused=True)",
             _torch_builder(clip=True, fused=True), extra_bytes=lambda w: 3 * _grad_bytes(w)),
        Impl("fused_mup:pstate", "fused_mup.AdamW, states in param dtype (like torch)",
             _fused_mup_builder(False), applies=_mixed),
        # bf16 update modes: Kahan adds a bf16 compensation read + write (+4 B, counted from
        # state); master reads fp32 master weights instead of the bf16 param (-2 B beside the
        # +8 B of the master state counted from state).
        Impl("fused_mup:kahan", "fused_mup.AdamW(bf16_update='kahan')",
             _fused_mup_builder(True, "kahan"), applies=_bf16),
        Impl("fused_mup:stochastic", "fused_mup.AdamW(bf16_update='stochastic')",
             _fused_mup_builder(True, "stochastic"), applies=_bf16),
        Impl("fused_mup:master", "fused_mup.AdamW(bf16_update='master')",
             _fused_mup_builder(True, "master"), applies=_bf16,
             extra_bytes=lambda w: -_grad_bytes(w)),
        Impl("apex", "apex.optimizers.FusedAdam", _apex_build,
             _import_check("apex.optimizers", cuda_only=True)),
        Impl("te", "transformer_engine FusedAdam", _te_build,
             _import_check("transformer_engine.pytorch.optimizers", cuda_only=True)),
        Impl("optimi", "optimi.AdamW (foreach)", _optimi_build,
             _import_check("optimi", cuda_only=False)),
        # Last: compiling can take minutes, so a time budget cuts it first.
        Impl("torch_compile", "torch.compile'd AdamW(foreach=True).step", _compile_build,
             cleanup=torch.compiler.reset),  # compiled graphs keep the state tensors alive
    ]  # fmt: skip
