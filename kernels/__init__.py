"""Triton device code. Installs as ``fused_mup.kernels``; holds jit kernels and nothing else.

The table contract (:mod:`fused_mup.kernels.tables`) imports without triton; the kernels load
on first use, so the CPU path and the presets work where triton is not installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from fused_mup.kernels.tables import (
    CHUNK_COLS,
    CLIP_SLOTS,
    GROUP_COLS,
    GROUP_TABLE_COLS,
    TENSOR_COLS,
    ChunkCol,
    ClipSlot,
    DerivedGroupCol,
    GroupCol,
    TensorCol,
    Update,
)

__all__ = [
    "CHUNK_COLS",
    "CLIP_SLOTS",
    "GROUP_COLS",
    "GROUP_TABLE_COLS",
    "TENSOR_COLS",
    "ChunkCol",
    "ClipSlot",
    "DerivedGroupCol",
    "GroupCol",
    "TensorCol",
    "Update",
    "adamw_kernel",
    "grad_norm_kernel",
]

_KERNELS = {"adamw_kernel": "adamw", "grad_norm_kernel": "grad_norm"}


def __getattr__(name: str) -> Any:
    if name in _KERNELS:
        module = importlib.import_module(f"fused_mup.kernels.{_KERNELS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'fused_mup.kernels' has no attribute {name!r}")
