"""Triton device code. Installs as ``fused_mup.kernels``; holds jit kernels and nothing else."""

from fused_mup.kernels.adamw import (
    CHUNK_COLS,
    GROUP_COLS,
    TENSOR_COLS,
    adamw_kernel,
)

__all__ = ["CHUNK_COLS", "GROUP_COLS", "TENSOR_COLS", "adamw_kernel"]
