"""Multi-tensor AdamW: every tensor of every param group in one launch.

Each program updates one chunk of one tensor, which it finds through the tensor, chunk and group
tables of ``fused_mup.kernels.tables`` (the one definition of their layout), built by
``fused_mup.launcher``. Hyperparameters come from the group table and the clip buffer, never
from constexprs, so a new LR or max_norm never compiles a new kernel.
"""

import triton
import triton.language as tl
from fused_mup.kernels.tables import (
    C_AUX,
    C_BETA1,
    C_BETA2,
    C_CHUNK_COLS,
    C_CHUNK_START,
    C_CHUNK_TENSOR,
    C_DECAY,
    C_EPS,
    C_EXP_AVG,
    C_EXP_AVG_SQ,
    C_GRAD,
    C_GROUP,
    C_GROUP_COLS,
    C_LR,
    C_MAX_EXP_AVG_SQ,
    C_MAX_NORM,
    C_N_CHUNKS,
    C_NUMEL,
    C_PARAM,
    C_STEP,
    C_SUMSQ,
    C_TENSOR_COLS,
    C_UPDATE_KAHAN,
    C_UPDATE_MASTER,
    C_UPDATE_STOCHASTIC,
    address,
)

__all__ = ["adamw_kernel"]


@triton.jit
def _pow_by_squaring(base, exponent):
    # beta**step in fp64 by binary exponentiation: exact to a few ulp and built only from
    # multiplies, where a fp32 exp/log would cost 1e-4 relative error in 1 - beta2**step.
    result = tl.full((), 1.0, tl.float64)
    for bit in tl.static_range(31):
        result = tl.where(((exponent >> bit) & 1) == 1, result * base, result)
        base = base * base
    return result


@triton.jit
def _round_to(x, DTYPE: tl.constexpr):
    """fp32 -> DTYPE, round to nearest even.

    bf16 is rounded by hand, as c10::BFloat16 does, because Triton's interpreter truncates (and
    its "rtne" mode does not carry into the exponent); on a GPU this equals cvt.rn.bf16.f32.
    """
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # keep NaN a NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@triton.jit
def _round_to_bf16_stochastic(x, seed, offsets):
    """Rounds up with probability equal to the dropped fraction, so E[round(x)] = x."""
    noise = tl.randint(seed, offsets) & 0xFFFF
    bits = (x.to(tl.uint32, bitcast=True) + noise) >> 16
    bits = tl.where(x != x, 0x7FC0, bits)
    return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _load(ptr, offsets, mask, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr + offsets, mask=mask)
    else:
        return tl.load(ptr + offsets)


@triton.jit
def _store(ptr, offsets, value, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offsets, value, mask=mask)
    else:
        tl.store(ptr + offsets, value)


@triton.jit
def _update_block(
    param_ptr,
    grad_ptr,
    exp_avg_ptr,
    exp_avg_sq_ptr,
    max_exp_avg_sq_ptr,
    aux_ptr,
    offsets,
    mask,
    inv_scale,
    clip_coef,
    keep,
    weight1,
    beta2,
    weight2,
    eps,
    bias_correction2_sqrt,
    neg_step_size,
    rng_seed,
    PARAM_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    UPDATE: tl.constexpr,
    MASKED: tl.constexpr,
):
    # Math in fp32 whatever the storage dtype; cast only at the store.
    if UPDATE == C_UPDATE_MASTER:
        param = _load(aux_ptr, offsets, mask, MASKED)
    else:
        param = _load(param_ptr, offsets, mask, MASKED).to(tl.float32)
    # Unscale, then clip: torch's order of roundings.
    grad = _load(grad_ptr, offsets, mask, MASKED).to(tl.float32) * inv_scale
    grad = grad * clip_coef
    if MAXIMIZE:
        grad = -grad
    exp_avg = _load(exp_avg_ptr, offsets, mask, MASKED).to(tl.float32)
    exp_avg_sq = _load(exp_avg_sq_ptr, offsets, mask, MASKED).to(tl.float32)

    new_param = param * keep
    # torch's lerp, which switches form at weight 0.5 to stay exact at both ends.
    if weight1 < 0.5:
        exp_avg = exp_avg + weight1 * (grad - exp_avg)
    else:
        exp_avg = grad - (grad - exp_avg) * (1.0 - weight1)
    exp_avg_sq = exp_avg_sq * beta2 + weight2 * grad * grad
    # IEEE sqrt and division (Triton defaults to approximate ones) keep fp32 within rounding
    # of torch's result.
    if AMSGRAD:
        max_exp_avg_sq = _load(max_exp_avg_sq_ptr, offsets, mask, MASKED).to(tl.float32)
        # NaN-propagating, as torch.maximum: the default drops a NaN operand (max.f32).
        max_exp_avg_sq = tl.maximum(max_exp_avg_sq, exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
        denom = tl.div_rn(tl.sqrt_rn(max_exp_avg_sq), bias_correction2_sqrt) + eps
        _store(max_exp_avg_sq_ptr, offsets, _round_to(max_exp_avg_sq, STATE_DTYPE), mask, MASKED)
    else:
        denom = tl.div_rn(tl.sqrt_rn(exp_avg_sq), bias_correction2_sqrt) + eps
    new_param = new_param + tl.div_rn(neg_step_size * exp_avg, denom)

    if UPDATE == C_UPDATE_KAHAN:
        # Add back what earlier roundings lost, and keep what this one loses.
        compensation = _load(aux_ptr, offsets, mask, MASKED).to(tl.float32)
        wanted = (new_param - param) + compensation
        stored = _round_to(param + wanted, PARAM_DTYPE)
        lost = wanted - (stored.to(tl.float32) - param)
        _store(aux_ptr, offsets, _round_to(lost, PARAM_DTYPE), mask, MASKED)
    elif UPDATE == C_UPDATE_STOCHASTIC:
        stored = _round_to_bf16_stochastic(new_param, rng_seed, offsets)
    elif UPDATE == C_UPDATE_MASTER:
        _store(aux_ptr, offsets, new_param, mask, MASKED)
        stored = _round_to(new_param, PARAM_DTYPE)
    else:
        stored = _round_to(new_param, PARAM_DTYPE)
    _store(param_ptr, offsets, stored, mask, MASKED)
    _store(exp_avg_ptr, offsets, _round_to(exp_avg, STATE_DTYPE), mask, MASKED)
    _store(exp_avg_sq_ptr, offsets, _round_to(exp_avg_sq, STATE_DTYPE), mask, MASKED)


@triton.jit
def _aux_address(aux_addr, PARAM_DTYPE: tl.constexpr, UPDATE: tl.constexpr, ALIGNED: tl.constexpr):
    # fp32 master weights, or a Kahan compensation in the param dtype.
    if UPDATE == C_UPDATE_MASTER:
        return address(aux_addr, tl.float32, ALIGNED)
    else:
        return address(aux_addr, PARAM_DTYPE, ALIGNED)


@triton.jit
def _update_full_blocks(
    param_addr,
    grad_addr,
    exp_avg_addr,
    exp_avg_sq_addr,
    max_exp_avg_sq_addr,
    aux_addr,
    block_start,
    full_end,
    inv_scale,
    clip_coef,
    keep,
    weight1,
    beta2,
    weight2,
    eps,
    bias_correction2_sqrt,
    neg_step_size,
    rng_seed,
    PARAM_DTYPE: tl.constexpr,
    STATE_DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    UPDATE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The unmasked whole blocks of one chunk: a mask of unknown alignment would stop
    vectorization. ALIGNED: every address is 16-byte aligned (vector loads and stores)."""
    param_ptr = address(param_addr, PARAM_DTYPE, ALIGNED)
    grad_ptr = address(grad_addr, PARAM_DTYPE, ALIGNED)
    exp_avg_ptr = address(exp_avg_addr, STATE_DTYPE, ALIGNED)
    exp_avg_sq_ptr = address(exp_avg_sq_addr, STATE_DTYPE, ALIGNED)
    max_exp_avg_sq_ptr = address(max_exp_avg_sq_addr, STATE_DTYPE, ALIGNED)
    aux_ptr = _aux_address(aux_addr, PARAM_DTYPE, UPDATE, ALIGNED)
    # A while loop, not range(): the interpreter cannot take range bounds from loaded scalars
    # under numpy >= 2.4.
    while block_start < full_end:
        offsets = block_start + tl.arange(0, BLOCK).to(tl.int64)
        _update_block(
            param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr, aux_ptr,
            offsets, offsets < full_end, inv_scale, clip_coef, keep, weight1, beta2, weight2,
            eps, bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, False,
        )  # fmt: skip
        block_start += BLOCK


@triton.jit
def adamw_kernel(
    tensor_table_ptr,  # int64 [n_tensors, TENSOR_COLS]
    chunk_table_ptr,  # int64 [n_programs, CHUNK_COLS]
    group_table_ptr,  # fp64 [n_groups, GROUP_COLS]
    done_count_ptr,  # int32 [n_tensors], zero between launches
    grad_scale_ptr,  # fp32 scalar: GradScaler's scale, 1.0 without one
    found_inf_ptr,  # fp32 scalar: nonzero skips the whole step
    clip_ptr,  # fp32 [CLIP_SLOTS]: ClipSlot.SUMSQ and MAX_NORM (0 and inf: no clipping)
    chunk_size,  # elements per program
    seed,  # stochastic rounding seed
    PARAM_DTYPE: tl.constexpr,  # also the grad dtype
    STATE_DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    UPDATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk_row = chunk_table_ptr + pid * C_CHUNK_COLS
    tensor_idx = tl.load(chunk_row + C_CHUNK_TENSOR)
    # int64, so tensors past 2**31 elements index correctly. Chunks start at multiples of
    # BLOCK (the launcher's chunk table), which the compiler carries into the loop below.
    start = tl.multiple_of(tl.load(chunk_row + C_CHUNK_START), BLOCK)

    row = tensor_table_ptr + tensor_idx * C_TENSOR_COLS
    param_addr = tl.load(row + C_PARAM)
    grad_addr = tl.load(row + C_GRAD)
    exp_avg_addr = tl.load(row + C_EXP_AVG)
    exp_avg_sq_addr = tl.load(row + C_EXP_AVG_SQ)
    max_exp_avg_sq_addr = tl.load(row + C_MAX_EXP_AVG_SQ)
    aux_addr = tl.load(row + C_AUX)
    step_ptr = tl.load(row + C_STEP).to(tl.pointer_type(tl.float32))
    numel = tl.load(row + C_NUMEL)
    group_idx = tl.load(row + C_GROUP)
    n_chunks = tl.load(row + C_N_CHUNKS)

    group_row = group_table_ptr + group_idx * C_GROUP_COLS
    lr = tl.load(group_row + C_LR)
    decay = tl.load(group_row + C_DECAY)
    beta1 = tl.load(group_row + C_BETA1)
    beta2 = tl.load(group_row + C_BETA2)
    eps = tl.load(group_row + C_EPS).to(tl.float32)

    # GradScaler: scale and found_inf are read on the device; an inf step changes nothing,
    # its step count included. Clipping: torch's coefficient, min(1, max_norm / (norm + 1e-6)),
    # NaN for a NaN norm as torch's clamp gives (the default minimum would drop the NaN and
    # update every finite element with its unclipped grad).
    inv_scale = 1.0 / tl.load(grad_scale_ptr).to(tl.float32)
    clip_coef = tl.minimum(
        tl.load(clip_ptr + C_MAX_NORM) / (tl.sqrt_rn(tl.load(clip_ptr + C_SUMSQ)) + 1e-6),
        1.0,
        propagate_nan=tl.PropagateNan.ALL,
    ).to(tl.float32)
    update = tl.load(found_inf_ptr) == 0
    old_step = tl.load(step_ptr)
    step = old_step + update.to(tl.float32)

    # Scalars in fp64 as torch computes them on the host, then rounded once to fp32.
    step_int = step.to(tl.int32)
    bias_correction1 = 1.0 - _pow_by_squaring(beta1, step_int)
    bias_correction2 = 1.0 - _pow_by_squaring(beta2, step_int)
    neg_step_size = (-lr / bias_correction1).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
    keep = (1.0 - decay).to(tl.float32)
    weight1 = (1.0 - beta1).to(tl.float32)
    beta2_f = beta2.to(tl.float32)
    weight2 = (1.0 - beta2).to(tl.float32)
    rng_seed = seed + step_int.to(tl.int64) * 1_000_003 + tensor_idx * 7_919

    # On an inf step the range is empty: nothing is read or written.
    end = tl.where(update, tl.minimum(start + chunk_size, numel), start)
    full_end = start + (end - start) // BLOCK * BLOCK
    # Alignment per tensor, read off its own addresses (0 for an absent state is aligned): one
    # misaligned tensor, such as a 1-element grad at the head of a DDP bucket view, takes the
    # scalar-access loop alone while every other tensor of the launch keeps 16-byte vectors.
    # Both loops are compiled into the kernel; the branch is uniform over the program.
    misaligned = (
        param_addr | grad_addr | exp_avg_addr | exp_avg_sq_addr | max_exp_avg_sq_addr | aux_addr
    ) & 15
    if misaligned == 0:
        _update_full_blocks(
            param_addr, grad_addr, exp_avg_addr, exp_avg_sq_addr, max_exp_avg_sq_addr, aux_addr,
            start, full_end, inv_scale, clip_coef, keep, weight1, beta2_f, weight2, eps,
            bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, True, BLOCK,
        )  # fmt: skip
    else:
        _update_full_blocks(
            param_addr, grad_addr, exp_avg_addr, exp_avg_sq_addr, max_exp_avg_sq_addr, aux_addr,
            start, full_end, inv_scale, clip_coef, keep, weight1, beta2_f, weight2, eps,
            bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, False, BLOCK,
        )  # fmt: skip
    if full_end < end:  # one masked tail, with scalar accesses
        offsets = full_end + tl.arange(0, BLOCK).to(tl.int64)
        _update_block(
            address(param_addr, PARAM_DTYPE, False),
            address(grad_addr, PARAM_DTYPE, False),
            address(exp_avg_addr, STATE_DTYPE, False),
            address(exp_avg_sq_addr, STATE_DTYPE, False),
            address(max_exp_avg_sq_addr, STATE_DTYPE, False),
            _aux_address(aux_addr, PARAM_DTYPE, UPDATE, False),
            offsets, offsets < end, inv_scale, clip_coef, keep, weight1, beta2_f, weight2, eps,
            bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, True,
        )  # fmt: skip

    # Every program of a tensor reads the old step above; the last one to finish writes the new
    # one, so a single launch needs no second pass and no host round trip. The barrier makes
    # every warp of this program read the old step before its one atomic counts it as done.
    # acq_rel, explicitly: the last program's acquire orders its step write after every other
    # program's reads of the old step.
    tl.debug_barrier()
    finished = tl.atomic_add(done_count_ptr + tensor_idx, 1, sem="acq_rel")
    if finished == n_chunks - 1:
        tl.store(step_ptr, step)
        tl.store(done_count_ptr + tensor_idx, 0)
