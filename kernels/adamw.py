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
    C_CHUNK_END,
    C_CHUNK_GROUP,
    C_CHUNK_N_CHUNKS,
    C_CHUNK_START,
    C_CHUNK_STEP,
    C_CHUNK_TENSOR,
    C_DECAY,
    C_EPS,
    C_EXP_AVG,
    C_EXP_AVG_SQ,
    C_GRAD,
    C_GROUP_TABLE_COLS,
    C_LOG_BETA1,
    C_LOG_BETA2,
    C_LR,
    C_MAX_EXP_AVG_SQ,
    C_MAX_NORM,
    C_PARAM,
    C_SUMSQ,
    C_TENSOR_COLS,
    C_UPDATE_KAHAN,
    C_UPDATE_MASTER,
    C_UPDATE_STOCHASTIC,
)

__all__ = ["adamw_kernel"]


@triton.jit
def _step_scalars(step, lr, log_beta1, log_beta2):
    """-lr / (1 - beta1**step) and sqrt(1 - beta2**step): computed in fp64 as torch computes them
    on the host, then rounded once to fp32. Elementwise, so a test can run it over many steps.

    beta**step = exp(step * log(beta)), log(beta) from the launcher: one fp64 exp per beta
    (~1e-16 relative error, far below fp32's rounding) instead of 31 dependent squarings per
    beta. step >= 1 (the kernel passes 1 on an inf step at step 0, whose result is unused).
    """
    step64 = step.to(tl.float64)
    bias_correction1 = 1.0 - tl.exp(step64 * log_beta1)
    bias_correction2 = 1.0 - tl.exp(step64 * log_beta2)
    neg_step_size = (-lr / bias_correction1).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(tl.float32)
    return neg_step_size, bias_correction2_sqrt


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
def _hash32(x):
    """A 32-bit integer hash with full avalanche (Wellons' lowbias32)."""
    x ^= x >> 16
    x *= 0x21F0AAAD
    x ^= x >> 15
    x *= 0xD35A2D97
    x ^= x >> 15
    return x


@triton.jit
def _round_to_bf16_stochastic(x, seed, offsets):
    """Rounds up with probability equal to the dropped fraction, so E[round(x)] = x.

    The noise is a hash of (seed, element index): a few 32-bit multiplies per element. Philox
    (tl.randint) held up to 48 more registers per thread (bf16 params, fp32 states, AMSGrad:
    128 vs 80 on Triton 3.9) and cost up to two CTAs per SM (bench/results/kernel-occupancy/).
    """
    key = _hash32((seed ^ (seed >> 32)).to(tl.uint32))
    noise = _hash32(offsets.to(tl.uint32) ^ key) >> 16
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
def _pointer(entry, DTYPE: tl.constexpr, STATE_DTYPE: tl.constexpr, UPDATE: tl.constexpr,
             ALIGNED: tl.constexpr):  # fmt: skip
    """A table address as a pointer. ALIGNED (the tensor's addresses are 16-byte aligned): the
    widest dtype of the variant gets 16-byte accesses and a 16-bit tensor among fp32 ones 8-byte
    accesses, so that every tensor has 4 elements per thread per access. One thread layout for
    all: a bf16 param beside fp32 states needs no layout conversion through shared memory."""
    ptr = entry.to(tl.pointer_type(DTYPE))
    if not ALIGNED:
        return ptr
    # The hint goes on the pointer: alignment analysis does not see through int-to-pointer.
    elif DTYPE == tl.float32:
        return tl.multiple_of(ptr, 16)
    elif STATE_DTYPE == tl.float32:
        return tl.multiple_of(ptr, 8)
    elif UPDATE == C_UPDATE_MASTER:  # fp32 master weights
        return tl.multiple_of(ptr, 8)
    else:
        return tl.multiple_of(ptr, 16)


@triton.jit
def _update_range(
    param_addr,
    grad_addr,
    exp_avg_addr,
    exp_avg_sq_addr,
    max_exp_avg_sq_addr,
    aux_addr,
    start,
    end,
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
    """Elements [start, end) of one tensor.

    ALIGNED: whole blocks unmasked (a mask of unknown alignment would stop vectorization), then
    one masked tail. Otherwise scalar accesses, all masked, in half blocks: a different shape,
    so the compiler lays these out apart from the vector loop (the same shape would give their
    loads the vector loop's layout and their scalar stores a conversion through shared memory).
    """
    S: tl.constexpr = STATE_DTYPE
    param_ptr = _pointer(param_addr, PARAM_DTYPE, S, UPDATE, ALIGNED)
    grad_ptr = _pointer(grad_addr, PARAM_DTYPE, S, UPDATE, ALIGNED)
    exp_avg_ptr = _pointer(exp_avg_addr, S, S, UPDATE, ALIGNED)
    exp_avg_sq_ptr = _pointer(exp_avg_sq_addr, S, S, UPDATE, ALIGNED)
    max_exp_avg_sq_ptr = _pointer(max_exp_avg_sq_addr, S, S, UPDATE, ALIGNED)
    if UPDATE == C_UPDATE_MASTER:  # fp32 master weights, or a compensation in the param dtype
        aux_ptr = _pointer(aux_addr, tl.float32, S, UPDATE, ALIGNED)
    else:
        aux_ptr = _pointer(aux_addr, PARAM_DTYPE, S, UPDATE, ALIGNED)
    # While loops, not range(): the interpreter cannot take range bounds from loaded scalars
    # under numpy >= 2.4.
    if ALIGNED:
        full_end = start + (end - start) // BLOCK * BLOCK
        block_start = start
        while block_start < full_end:
            offsets = block_start + tl.arange(0, BLOCK).to(tl.int64)
            _update_block(
                param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr, aux_ptr,
                offsets, offsets < end, inv_scale, clip_coef, keep, weight1, beta2, weight2,
                eps, bias_correction2_sqrt, neg_step_size, rng_seed,
                PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, False,
            )  # fmt: skip
            block_start += BLOCK
        if full_end < end:
            offsets = full_end + tl.arange(0, BLOCK).to(tl.int64)
            _update_block(
                param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr, aux_ptr,
                offsets, offsets < end, inv_scale, clip_coef, keep, weight1, beta2, weight2,
                eps, bias_correction2_sqrt, neg_step_size, rng_seed,
                PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, True,
            )  # fmt: skip
    else:
        block_start = start
        while block_start < end:
            offsets = block_start + tl.arange(0, BLOCK // 2).to(tl.int64)
            _update_block(
                param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr, aux_ptr,
                offsets, offsets < end, inv_scale, clip_coef, keep, weight1, beta2, weight2,
                eps, bias_correction2_sqrt, neg_step_size, rng_seed,
                PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, True,
            )  # fmt: skip
            block_start += BLOCK // 2


@triton.jit
def adamw_kernel(
    tensor_table_ptr,  # int64 [n_tensors, TENSOR_COLS]
    chunk_table_ptr,  # int64 [n_programs, CHUNK_COLS]
    group_table_ptr,  # fp64 [n_groups, GROUP_TABLE_COLS]
    done_count_ptr,  # int32 [n_tensors], zero between launches
    grad_scale_ptr,  # fp32 scalar: GradScaler's scale, 1.0 without one
    found_inf_ptr,  # fp32 scalar: nonzero skips the whole step
    clip_ptr,  # fp32 [CLIP_SLOTS]: ClipSlot.SUMSQ and MAX_NORM (0 and inf: no clipping)
    seed,  # stochastic rounding seed
    rng_count_ptr,  # int64 [2]: launches counted so far, programs done in this one
    PARAM_DTYPE: tl.constexpr,  # also the grad dtype
    STATE_DTYPE: tl.constexpr,
    AMSGRAD: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    UPDATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    # Dependent loads: the chunk row, then (in parallel) the tensor's addresses, its group's
    # row and its step. int64 offsets, so tensors past 2**31 elements index correctly.
    chunk_row = chunk_table_ptr + pid * C_CHUNK_COLS
    tensor_idx = tl.load(chunk_row + C_CHUNK_TENSOR)
    # Chunks start at multiples of BLOCK, which the compiler carries into the loop below.
    start = tl.multiple_of(tl.load(chunk_row + C_CHUNK_START), BLOCK)
    chunk_end = tl.load(chunk_row + C_CHUNK_END)
    group_idx = tl.load(chunk_row + C_CHUNK_GROUP)
    step_ptr = tl.load(chunk_row + C_CHUNK_STEP).to(tl.pointer_type(tl.float32))
    n_chunks = tl.load(chunk_row + C_CHUNK_N_CHUNKS)

    row = tensor_table_ptr + tensor_idx * C_TENSOR_COLS
    param_addr = tl.load(row + C_PARAM)
    grad_addr = tl.load(row + C_GRAD)
    exp_avg_addr = tl.load(row + C_EXP_AVG)
    exp_avg_sq_addr = tl.load(row + C_EXP_AVG_SQ)
    max_exp_avg_sq_addr = tl.load(row + C_MAX_EXP_AVG_SQ)
    aux_addr = tl.load(row + C_AUX)

    group_row = group_table_ptr + group_idx * C_GROUP_TABLE_COLS
    lr = tl.load(group_row + C_LR)
    decay = tl.load(group_row + C_DECAY)
    beta1 = tl.load(group_row + C_BETA1)
    beta2 = tl.load(group_row + C_BETA2)
    eps = tl.load(group_row + C_EPS).to(tl.float32)
    log_beta1 = tl.load(group_row + C_LOG_BETA1)
    log_beta2 = tl.load(group_row + C_LOG_BETA2)

    # GradScaler: scale and found_inf are read on the device; an inf step changes nothing,
    # its step count included. Clipping: torch's coefficient, min(1, max_norm / (norm + 1e-6)),
    # NaN for a NaN norm as torch's clamp gives (the default minimum would drop the NaN and
    # update every finite element with its unclipped grad).
    # Correctly rounded, as torch divides (a plain `/` is div.full.f32, up to 2 ulp off).
    inv_scale = tl.div_rn(1.0, tl.load(grad_scale_ptr).to(tl.float32))
    clip_coef = tl.minimum(
        tl.div_rn(tl.load(clip_ptr + C_MAX_NORM), tl.sqrt_rn(tl.load(clip_ptr + C_SUMSQ)) + 1e-6),
        1.0,
        propagate_nan=tl.PropagateNan.ALL,
    ).to(tl.float32)
    update = tl.load(found_inf_ptr) == 0
    old_step = tl.load(step_ptr)
    step = old_step + update.to(tl.float32)

    # An inf step at step 0 would divide by zero (its result is unused): take step 1 there.
    neg_step_size, bias_correction2_sqrt = _step_scalars(
        tl.maximum(step, 1.0), lr, log_beta1, log_beta2
    )
    keep = (1.0 - decay).to(tl.float32)
    weight1 = (1.0 - beta1).to(tl.float32)
    beta2_f = beta2.to(tl.float32)
    weight2 = (1.0 - beta2).to(tl.float32)
    if UPDATE == C_UPDATE_STOCHASTIC:
        # The noise key is the step count, exact as an fp32 up to 2**24. From there on torch's
        # fp32 step stops counting (step + 1 == step), and a key from it would round the same
        # elements up on every step: the key becomes a launch count on the device instead (kept
        # out of the range below, so that runs and resumes before 2**24 keep their noise).
        launches = tl.load(rng_count_ptr)
        noise_step = tl.where(
            old_step < 16777216.0, step.to(tl.int64), 16777217 + launches.to(tl.int64)
        )
    else:
        noise_step = step.to(tl.int64)
    rng_seed = seed + noise_step * 1_000_003 + tensor_idx * 7_919

    # On an inf step the range is empty: nothing is read or written.
    end = tl.where(update, chunk_end, start)
    # Alignment per tensor, read off its own addresses (0 for an absent state is aligned): one
    # misaligned tensor, such as a 1-element grad at the head of a DDP bucket view, takes the
    # scalar loop alone while every other tensor of the launch keeps its vector accesses.
    # Both loops are compiled into the kernel; the branch is uniform over the program.
    misaligned = (
        param_addr | grad_addr | exp_avg_addr | exp_avg_sq_addr | max_exp_avg_sq_addr | aux_addr
    ) & 15
    if misaligned == 0:
        _update_range(
            param_addr, grad_addr, exp_avg_addr, exp_avg_sq_addr, max_exp_avg_sq_addr, aux_addr,
            start, end, inv_scale, clip_coef, keep, weight1, beta2_f, weight2, eps,
            bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, True, BLOCK,
        )  # fmt: skip
    else:
        _update_range(
            param_addr, grad_addr, exp_avg_addr, exp_avg_sq_addr, max_exp_avg_sq_addr, aux_addr,
            start, end, inv_scale, clip_coef, keep, weight1, beta2_f, weight2, eps,
            bias_correction2_sqrt, neg_step_size, rng_seed,
            PARAM_DTYPE, STATE_DTYPE, AMSGRAD, MAXIMIZE, UPDATE, False, BLOCK,
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
    if UPDATE == C_UPDATE_STOCHASTIC:
        # The same rule for the launch count: the launch's last program counts it, after every
        # program has read it (the barrier above, then acq_rel).
        programs_done = tl.atomic_add(rng_count_ptr + 1, 1, sem="acq_rel")
        if programs_done == tl.num_programs(0) - 1:
            tl.store(rng_count_ptr, launches + 1)
            tl.store(rng_count_ptr + 1, 0)
