"""Squared L2 norm of all grads in one launch, for clipping and the inf check.

Reads the grad column of the AdamW tensor table, so it needs no tables of its own. Each program
writes the sum of squares of its chunk; a two-level reduction in the same launch (see below)
adds the partials in a fixed order and writes the total, max_norm and the non-finite flag into
the clip buffer that the AdamW kernel reads.
"""

import triton
import triton.language as tl
from fused_mup.kernels.tables import (
    C_CHUNK_COLS,
    C_CHUNK_END,
    C_CHUNK_START,
    C_CHUNK_TENSOR,
    C_GRAD,
    C_MAX_NORM,
    C_NONFINITE,
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
    partials_ptr,  # fp32 [n_programs + cdiv(n_programs, BLOCK)] scratch
    done_count_ptr,  # int32 [1 + cdiv(n_programs, BLOCK)], zero between launches
    grad_scale_ptr,  # fp32 scalar: the norm is of grad / grad_scale
    clip_ptr,  # fp32 [CLIP_SLOTS] out: ClipSlot.SUMSQ, MAX_NORM, NONFINITE
    n_programs,
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
    # Unscale before squaring so that a large loss scale cannot overflow the fp32 sum;
    # correctly rounded, as torch divides (a plain `/` is div.full.f32, up to 2 ulp off).
    inv_scale = tl.div_rn(1.0, tl.load(grad_scale_ptr).to(tl.float32))

    end = tl.load(chunk_row + C_CHUNK_END)
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

    # A two-level reduction, deterministic (fixed sets summed in a fixed tree, unlike float
    # atomics) and parallel: the last program to finish in each run of BLOCK consecutive
    # programs sums their partials with one vector load; the last of those sums the per-run
    # sums. Two dependent loads in the critical path, where one program walking all partials
    # needs n_programs / BLOCK of them (~20 at 1.3B params, ~200 at 13B).
    # .cg loads read L2, where the other programs' stores landed; acq_rel atomics order them.
    n_runs = tl.cdiv(n_programs, BLOCK)
    run = pid // BLOCK
    run_start = run * BLOCK
    run_size = tl.minimum(n_programs - run_start, BLOCK)
    run_sums_ptr = partials_ptr + n_programs
    tl.debug_barrier()
    finished = tl.atomic_add(done_count_ptr + 1 + run, 1, sem="acq_rel")
    if finished == run_size - 1:
        idx = run_start + tl.arange(0, BLOCK)
        part = tl.load(partials_ptr + idx, mask=idx < n_programs, other=0.0, cache_modifier=".cg")
        tl.store(run_sums_ptr + run, tl.sum(part, axis=0))
        tl.store(done_count_ptr + 1 + run, 0)
        tl.debug_barrier()
        runs_finished = tl.atomic_add(done_count_ptr, 1, sem="acq_rel")
        if runs_finished == n_runs - 1:
            total = tl.zeros((BLOCK,), tl.float32)
            first = 0
            while first < n_runs:  # one iteration up to BLOCK**2 programs
                idx = first + tl.arange(0, BLOCK)
                first += BLOCK
                total += tl.load(
                    run_sums_ptr + idx, mask=idx < n_runs, other=0.0, cache_modifier=".cg"
                )
            # where, not a multiply by accumulate: an unset buffer may hold NaN (NaN * 0 = NaN).
            previous = tl.where(accumulate != 0, tl.load(clip_ptr + C_SUMSQ), 0.0)
            sumsq = tl.sum(total, axis=0) + previous
            tl.store(clip_ptr + C_SUMSQ, sumsq)
            tl.store(clip_ptr + C_MAX_NORM, max_norm)
            # A sum of squares is never -inf: the flag is set for +inf or NaN (compared, not
            # inf - inf, which the interpreter reports as an invalid operation).
            nonfinite = (sumsq != sumsq) | (sumsq == float("inf"))
            tl.store(clip_ptr + C_NONFINITE, nonfinite.to(tl.float32))
            tl.store(done_count_ptr, 0)
