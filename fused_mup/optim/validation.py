"""Argument and param-group checks, with torch.optim.AdamW's messages where it has one."""

from __future__ import annotations

import warnings
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from fused_mup.optim.modes import UPDATE_MODES
from fused_mup.presets.groups import WEIGHT_DECAY_MODES

__all__ = [
    "BACKENDS",
    "DEPRECATED_BACKENDS",
    "EXTRA_GROUP_KEYS",
    "KERNEL_DTYPES",
    "WEIGHT_DECAY_MODES",
    "check_hyperparameters",
    "normalize_backend",
    "to_scalar",
]

BACKENDS = ("auto", "triton", "reference")
# Old names still accepted, each with a FutureWarning naming its replacement.
DEPRECATED_BACKENDS = {"torch": "reference"}
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Group keys that fused_mup adds to torch's; kept across load_state_dict of a torch checkpoint.
EXTRA_GROUP_KEYS = {
    "lr_mult": 1.0,
    "wd_mult": 1.0,
    "weight_decay_mode": "coupled",
    "bf16_update": "round",
    "peak_lr": None,  # independent decay's reference LR; tracked as the running max of lr
}


def check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """torch.optim.AdamW's checks, in its order and with its messages (the group named when it
    is not the constructor's defaults), then ours."""
    lr, eps, betas, weight_decay = group["lr"], group["eps"], group["betas"], group["weight_decay"]
    suffix = "" if not where else f" in {where}"
    # Each key's type is checked just before torch's comparison would fail on it (lr="1e-3"
    # from a YAML file gives torch's "'<=' not supported ..."), in torch's words, group named.
    _require_number(lr, "Invalid learning rate:", suffix)
    foreach, capturable = group.get("foreach"), group.get("capturable", False)
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError(
                f"lr as a Tensor is not supported for capturable=False and foreach=True{suffix}"
            )
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element{suffix}")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}{suffix}")
    _require_number(eps, "Invalid epsilon value:", suffix)
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}{suffix}")
    if isinstance(betas, (str, bytes)) or len(betas) != 2:
        raise TypeError(
            f"Invalid betas: {betas!r}{suffix}; expected two numbers, e.g. (0.9, 0.999)"
        )
    for i, beta in enumerate(betas):
        _require_number(beta, f"Invalid beta parameter at index {i}:", suffix)
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}{suffix}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}{suffix}")
    _require_number(weight_decay, "Invalid weight_decay value:", suffix)
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}{suffix}")
    if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
        raise ValueError(f"betas must be either both floats or both Tensors{suffix}")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if foreach and not capturable:
                raise ValueError(
                    f"betas[{i}] as a Tensor is not supported for capturable=False and "
                    f"foreach=True{suffix}"
                )
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element{suffix}")
    for key in ("lr_mult", "wd_mult"):
        _require_number(group[key], f"Invalid {key} value:", suffix)
    if not 0.0 <= group["lr_mult"]:
        raise ValueError(f"Invalid lr_mult value: {group['lr_mult']}{suffix}")
    if not 0.0 <= group["wd_mult"]:
        raise ValueError(f"Invalid wd_mult value: {group['wd_mult']}{suffix}")
    if group["weight_decay_mode"] not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode: {group['weight_decay_mode']!r}{suffix}; "
            f"expected one of {WEIGHT_DECAY_MODES}"
        )
    if group["weight_decay_mode"] == "independent" and weight_decay * group["wd_mult"] > 1.0:
        raise ValueError(
            f"Invalid independent weight decay: weight_decay * wd_mult = "
            f"{weight_decay * group['wd_mult']}{suffix}; it is the fraction of each weight removed "
            "per step at the peak LR, so it must be at most 1."
        )
    peak = group.get("peak_lr")
    if peak is not None:
        _require_number(peak, "Invalid peak_lr value:", suffix)
    if peak is not None and not 0.0 <= peak:
        raise ValueError(f"Invalid peak_lr value: {peak}{suffix}")
    if not group.get("decoupled_weight_decay", True):
        raise ValueError(
            f"decoupled_weight_decay=False{suffix}: fused_mup.AdamW applies decoupled (AdamW) "
            "weight decay only; use torch.optim.Adam for L2 weight decay."
        )
    if group["bf16_update"] not in UPDATE_MODES:
        raise ValueError(
            f"Invalid bf16_update: {group['bf16_update']!r}{suffix}; "
            f"expected one of {tuple(UPDATE_MODES)}"
        )


def normalize_backend(backend: str) -> str:
    """``backend`` checked, with a deprecated name replaced by its new one (and a FutureWarning
    that names it)."""
    new = DEPRECATED_BACKENDS.get(backend)
    if new is not None:
        warnings.warn(
            f"backend={backend!r} is deprecated and will be removed; use backend={new!r} "
            "(the same path: the reference implementation in fused_mup/reference.py)",
            FutureWarning,
            stacklevel=3,
        )
        return new
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r}; expected one of {BACKENDS}")
    return backend


def _require_number(value: Any, label: str, suffix: str) -> None:
    if not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{label} {value!r}{suffix}; expected a number, got {type(value).__name__}")


def to_scalar(x: Any) -> Any:
    """As torch's optimizers store tensor betas: a 1-element tensor becomes 0-d."""
    return x.squeeze() if isinstance(x, Tensor) and x.dim() != 0 else x
