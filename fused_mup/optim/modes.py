"""How a low-precision param takes its update: one row per ``bf16_update`` mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fused_mup.kernels.tables import Update

__all__ = ["UPDATE_MODES", "UpdateMode", "update_mode"]

_LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class UpdateMode:
    """A ``bf16_update`` value: its kernel code, its helper state and the dtypes it takes."""

    name: str
    code: Update
    aux_key: str | None = None  # state key of the helper buffer
    aux_fp32: bool = False  # the helper buffer is fp32 (else the param dtype)
    dtypes: tuple[torch.dtype, ...] = _LOW_PRECISION


UPDATE_MODES = {
    "round": UpdateMode("round", Update.ROUND),
    "kahan": UpdateMode("kahan", Update.KAHAN, aux_key="kahan_comp"),
    "stochastic": UpdateMode("stochastic", Update.STOCHASTIC, dtypes=(torch.bfloat16,)),
    "master": UpdateMode("master", Update.MASTER, aux_key="master_param", aux_fp32=True),
}
_ROUND = UPDATE_MODES["round"]


def update_mode(p: Tensor, group: dict[str, Any], where: str) -> UpdateMode:
    """The mode for ``p``: bf16_update applies to low-precision params only."""
    mode = UPDATE_MODES[group["bf16_update"]]
    dtype = p.real.dtype if p.is_complex() else p.dtype
    if dtype not in _LOW_PRECISION:
        return _ROUND
    if dtype not in mode.dtypes:
        raise ValueError(
            f"bf16_update={mode.name!r} rounds to bfloat16 only; {where} is {dtype}. Use "
            "'kahan' or 'master' for fp16 params."
        )
    return mode
