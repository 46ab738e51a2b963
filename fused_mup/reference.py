"""The reference path: plain-torch AdamW with exactly the kernel's semantics.

Each function is the reference implementation of one kernel, named after it:
:func:`adamw_step_` of ``adamw_kernel`` and :func:`grad_norm_sumsq` of ``grad_norm_kernel``.
They serve ``backend="reference"`` and the tensors the kernel does not take, and are the
oracle the kernels are tested against. Same op order as ``fused_mup.kernels.adamw``: math in
fp32 (fp64 for fp64 params), scalars computed in fp64 and rounded once, GradScaler's scale and
found_inf read as tensors so that nothing here synchronizes with the device.
"""

from __future__ import annotations

import torch

from fused_mup.kernels.tables import ClipSlot, Update

__all__ = ["adamw_step_", "grad_norm_sumsq", "round_stochastic_bf16"]


def round_stochastic_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 -> bf16, rounding up with probability equal to the dropped fraction."""
    noise = torch.randint(
        0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator
    )
    bits = (x.contiguous().view(torch.int32) + noise) & -65536
    out = bits.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), out)


def adamw_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None,
    step: torch.Tensor,
    *,
    lr: float,
    decay: float,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    clip: torch.Tensor | None = None,
    update: Update = Update.ROUND,
    aux: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Updates one (real) tensor in place: decoupled decay ``p *= 1 - decay``, then Adam.

    Args:
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq: same shape; real dtypes.
        step: 0-d fp32 step count, incremented unless ``found_inf`` is nonzero.
        lr: effective learning rate (group lr times lr_mult).
        decay: the fraction of the param removed by weight decay this step.
        grad_scale: divides the grad (GradScaler's scale), or None.
        found_inf: nonzero skips the update and the step count, or None.
        clip: the clip buffer (``ClipSlot``) written by the grad-norm pass, or None.
        update: how a low-precision param takes the update (``Update``).
        aux: the Kahan compensation or the fp32 master weights, for those modes.
        generator: the RNG of stochastic rounding.
    """
    compute = torch.promote_types(param.dtype, torch.float32)
    scalar = torch.float64
    g = grad.to(compute)
    if grad_scale is not None:
        g = g * (1.0 / grad_scale.to(compute).reshape(()))
    if clip is not None:
        coef = (clip[ClipSlot.MAX_NORM] / (clip[ClipSlot.SUMSQ].sqrt() + 1e-6)).clamp(max=1.0)
        g = g * coef.to(compute)
    if maximize:
        g = -g
    ok = None if found_inf is None else found_inf.to(step.device).reshape(()) == 0
    new_step = step + (1.0 if ok is None else ok.to(step.dtype))

    t = new_step.to(scalar)
    # Python bases: torch.tensor(beta, device=cuda) would be a host-to-device copy per call.
    bias_correction1 = 1.0 - torch.pow(beta1, t)
    bias_correction2 = 1.0 - torch.pow(beta2, t)
    neg_step_size = (-lr / bias_correction1).to(compute).to(param.device)
    bias_correction2_sqrt = bias_correction2.sqrt().to(compute).to(param.device)
    # decay is a device tensor under capturable=True with a tensor lr: kept there.
    keep = (1.0 - decay) if torch.is_tensor(decay) else torch.tensor(1.0 - decay, dtype=scalar)
    keep = keep.to(scalar).to(compute)
    weight1 = torch.tensor(1.0 - beta1, dtype=scalar).to(compute)
    beta2_c = torch.tensor(beta2, dtype=scalar).to(compute)
    weight2 = torch.tensor(1.0 - beta2, dtype=scalar).to(compute)
    eps_c = torch.tensor(eps, dtype=scalar).to(compute)

    source = aux if update == Update.MASTER else param
    p0 = source.to(compute)
    p = p0 * keep
    m = exp_avg.to(compute)
    # torch's lerp switches form at weight 0.5 to stay exact at both ends.
    if 1.0 - beta1 < 0.5:
        m = m + weight1 * (g - m)
    else:
        m = g - (g - m) * (1.0 - weight1)
    v = exp_avg_sq.to(compute) * beta2_c + weight2 * g * g
    if max_exp_avg_sq is not None:
        vmax = torch.maximum(max_exp_avg_sq.to(compute), v)
        denom = vmax.sqrt() / bias_correction2_sqrt + eps_c
    else:
        denom = v.sqrt() / bias_correction2_sqrt + eps_c
    p = p + neg_step_size * m / denom

    outputs = [(exp_avg, m), (exp_avg_sq, v)]
    if max_exp_avg_sq is not None:
        outputs.append((max_exp_avg_sq, vmax))
    if update == Update.KAHAN:
        # Add back what earlier roundings lost, and keep what this one loses.
        wanted = (p - p0) + aux.to(compute)
        stored = (p0 + wanted).to(param.dtype)
        outputs.append((aux, wanted - (stored.to(compute) - p0)))
        outputs.append((param, stored))
    elif update == Update.STOCHASTIC:
        outputs.append((param, round_stochastic_bf16(p.float(), generator)))
    elif update == Update.MASTER:
        outputs += [(aux, p), (param, p)]
    else:
        outputs.append((param, p))
    for dst, new in outputs:
        if ok is not None:
            new = torch.where(ok.to(dst.device), new.to(dst.dtype), dst)
        dst.copy_(new)
    step.copy_(new_step)


def grad_norm_sumsq(grads: list[torch.Tensor], grad_scale: torch.Tensor) -> torch.Tensor:
    """Sum of squares of ``grad / grad_scale`` over all grads, in fp32, as a 0-d tensor.

    Unscales before squaring, as the kernel does, so a large loss scale cannot overflow.
    """
    inv = 1.0 / grad_scale.to(torch.float32).reshape(())
    total = torch.zeros((), dtype=torch.float32, device=grad_scale.device)
    for g in grads:
        total = total + (g.float() * inv).square().sum()
    return total
