"""Triton device code. Installs as ``fused_mup.kernels``; holds jit kernels and nothing else."""

from fused_mup.kernels.adamw import (
    CHUNK_COLS,
    GROUP_COLS,
    TENSOR_COLS,
    UPDATE_KAHAN,
    UPDATE_MASTER,
    UPDATE_ROUND,
    UPDATE_STOCHASTIC,
    adamw_kernel,
)
from fused_mup.kernels.grad_norm import grad_sumsq_kernel

__all__ = [
    "CHUNK_COLS",
    "GROUP_COLS",
    "TENSOR_COLS",
    "UPDATE_KAHAN",
    "UPDATE_MASTER",
    "UPDATE_ROUND",
    "UPDATE_STOCHASTIC",
    "adamw_kernel",
    "grad_sumsq_kernel",
]
