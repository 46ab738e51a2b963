"""Squared L2 norm of all grads in one launch, for clipping and the inf check.

Reads the grad column of the AdamW tensor table, so it needs no tables of its own. Each program
writes the sum of squares of its chunk; the last program to finish adds the partials in program
order (deterministic, unlike float atomics) and writes the total, max_norm and the non-finite
flag into the clip buffer that the AdamW kernel reads.
"""

import triton
import triton.language as tl
from fused_mup.kernels.tables import (
    C_CHUNK_COLS,
    C_CHUNK_START,
    C_CHUNK_TENSOR,
    C_GRAD,
    C_MAX_NORM,
    C_NONFINITE,
    C_NUMEL,
    C_SUMSQ,
    C_TENSOR_COLS,
    address,
)

__all__ = ["grad_norm_kernel"]


@triton.jit
def _sumsq_full_blocks(
    grad_addr, block_start, full_end, inv_scale, PARAM_DTYPE: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Squares of the whole blocks, unmasked (vector loads when ALIGNED)."""
    grad_ptr = address(grad_addr, PARAM_DTYPE, ALIGNED)
    acc = tl.zeros((BLOCK,), tl.float32)
    while block_start < full_end:  # while, not range(): see the AdamW kernel's loop
        offsets = block_start + tl.arange(0, BLOCK).to(tl.int64)
        block_start += BLOCK
        grad = tl.load(grad_ptr + offsets).to(tl.float32) * inv_scale
        acc += grad * grad
    return acc


@triton.jit
def grad_norm_kernel(
    tensor_table_ptr,  # int64 [n_tensors, TENSOR_COLS] (AdamW's table)
    chunk_table_ptr,  # int64 [n_programs, CHUNK_COLS]
    partials_ptr,  # fp32 [n_programs] scratch
    done_count_ptr,  # int32 [1], zero between launches
    grad_scale_ptr,  # fp32 scalar: the norm is of grad / grad_scale
    clip_ptr,  # fp32 [CLIP_SLOTS] out: ClipSlot.SUMSQ, MAX_NORM, NONFINITE
    n_programs,
    chunk_size,
    max_norm,
    accumulate,  # 1: add to clip_ptr[0] (a second dtype bucket), 0: overwrite
    PARAM_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk_row = chunk_table_ptr + pid * C_CHUNK_COLS
    tensor_idx = tl.load(chunk_row + C_CHUNK_TENSOR)
    # Chunks start at multiples of BLOCK.
    start = tl.multiple_of(tl.load(chunk_row + C_CHUNK_START), BLOCK)
    row = tensor_table_ptr + tensor_idx * C_TENSOR_COLS
    grad_addr = tl.load(row + C_GRAD)
    numel = tl.load(row + C_NUMEL)
    # Unscale before squaring so that a large loss scale cannot overflow the fp32 sum.
    inv_scale = 1.0 / tl.load(grad_scale_ptr).to(tl.float32)

    end = tl.minimum(start + chunk_size, numel)
    # Whole blocks unmasked, with vector loads where this grad is 16-byte aligned (decided per
    # tensor, as in the AdamW kernel), then one masked tail.
    full_end = start + (end - start) // BLOCK * BLOCK
    if (grad_addr & 15) == 0:
        acc = _sumsq_full_blocks(grad_addr, start, full_end, inv_scale, PARAM_DTYPE, True, BLOCK)
    else:
        acc = _sumsq_full_blocks(grad_addr, start, full_end, inv_scale, PARAM_DTYPE, False, BLOCK)
    if full_end < end:
        offsets = full_end + tl.arange(0, BLOCK).to(tl.int64)
        grad_ptr = address(grad_addr, PARAM_DTYPE, False)
        grad = tl.load(grad_ptr + offsets, mask=offsets < end, other=0.0).to(tl.float32)
        grad = grad * inv_scale
        acc += grad * grad
    tl.store(partials_ptr + pid, tl.sum(acc, axis=0))

    # acq_rel: releases this program's partial, and the last one acquires everyone's.
    finished = tl.atomic_add(done_count_ptr, 1, sem="acq_rel")
    if finished == n_programs - 1:
        total = tl.zeros((BLOCK,), tl.float32)
        first = 0
        while first < n_programs:  # while, not range(): see the AdamW kernel's loop
            idx = first + tl.arange(0, BLOCK)
            first += BLOCK
            # .cg: read the partials from L2, where the other programs' stores landed.
            total += tl.load(
                partials_ptr + idx, mask=idx < n_programs, other=0.0, cache_modifier=".cg"
            )
        # where, not a multiply by accumulate: an unset buffer may hold NaN, and NaN * 0 is NaN.
        sumsq = tl.sum(total, axis=0) + tl.where(accumulate != 0, tl.load(clip_ptr + C_SUMSQ), 0.0)
        tl.store(clip_ptr + C_SUMSQ, sumsq)
        tl.store(clip_ptr + C_MAX_NORM, max_norm)
        tl.store(clip_ptr + C_NONFINITE, ((sumsq - sumsq) != 0).to(tl.float32))  # inf - inf is NaN
        tl.store(done_count_ptr, 0)
