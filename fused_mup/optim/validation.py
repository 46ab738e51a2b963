"""Argument and param-group checks, with torch.optim.AdamW's messages where it has one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fused_mup.optim.modes import UPDATE_MODES

__all__ = [
    "BACKENDS",
    "EXTRA_GROUP_KEYS",
    "KERNEL_DTYPES",
    "WEIGHT_DECAY_MODES",
    "check_hyperparameters",
]

BACKENDS = ("auto", "triton", "torch")
WEIGHT_DECAY_MODES = ("coupled", "independent")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Group keys that fused_mup adds to torch's; kept across load_state_dict of a torch checkpoint.
EXTRA_GROUP_KEYS = {
    "lr_mult": 1.0,
    "wd_mult": 1.0,
    "weight_decay_mode": "coupled",
    "bf16_update": "round",
}


def check_hyperparameters(group: dict[str, Any], where: str) -> None:
    """torch's ValueErrors, with the group named when it is not the constructor's defaults."""
    lr, eps, betas, weight_decay = group["lr"], group["eps"], group["betas"], group["weight_decay"]
    suffix = "" if not where else f" in {where}"
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Tensor lr must be 1-element{suffix}")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}{suffix}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}{suffix}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}{suffix}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}{suffix}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}{suffix}")
    if not 0.0 <= group["lr_mult"]:
        raise ValueError(f"Invalid lr_mult value: {group['lr_mult']}{suffix}")
    if not 0.0 <= group["wd_mult"]:
        raise ValueError(f"Invalid wd_mult value: {group['wd_mult']}{suffix}")
    if group["weight_decay_mode"] not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"Invalid weight_decay_mode: {group['weight_decay_mode']!r}{suffix}; "
            f"expected one of {WEIGHT_DECAY_MODES}"
        )
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
