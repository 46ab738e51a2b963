"""Plain-torch AdamW step with exactly the kernel's semantics.

Serves CPU tensors (``backend="auto"``), ``backend="torch"``, and is the reference the kernel is
tested against. Same op order as ``fused_mup.kernels.adamw``: math in fp32 (fp64 for fp64
params), scalars computed in fp64 and rounded once, GradScaler's scale and found_inf read as
tensors so that nothing here synchronizes with the device.
"""

from __future__ import annotations

import torch

__all__ = ["adamw_step_"]


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
) -> None:
    """Updates one (real) tensor in place: decoupled decay ``p *= 1 - decay``, then Adam.

    Args:
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq: same shape; real dtypes.
        step: 0-d fp32 step count, incremented unless ``found_inf`` is nonzero.
        lr: effective learning rate (group lr times lr_mult).
        decay: the fraction of the param removed by weight decay this step.
        grad_scale: divides the grad (GradScaler's scale), or None.
        found_inf: nonzero skips the update and the step count, or None.
    """
    compute = torch.promote_types(param.dtype, torch.float32)
    scalar = torch.float64
    g = grad.to(compute)
    if grad_scale is not None:
        g = g * (1.0 / grad_scale.to(compute))
    if maximize:
        g = -g
    update = None if found_inf is None else found_inf.to(step.device) == 0
    new_step = step + (1.0 if update is None else update.to(step.dtype))

    t = new_step.to(scalar)
    bias_correction1 = 1.0 - torch.pow(torch.tensor(beta1, dtype=scalar, device=t.device), t)
    bias_correction2 = 1.0 - torch.pow(torch.tensor(beta2, dtype=scalar, device=t.device), t)
    neg_step_size = (-lr / bias_correction1).to(compute).to(param.device)
    bias_correction2_sqrt = bias_correction2.sqrt().to(compute).to(param.device)
    keep = torch.tensor(1.0 - decay, dtype=scalar).to(compute)
    weight1 = torch.tensor(1.0 - beta1, dtype=scalar).to(compute)
    beta2_c = torch.tensor(beta2, dtype=scalar).to(compute)
    weight2 = torch.tensor(1.0 - beta2, dtype=scalar).to(compute)
    eps_c = torch.tensor(eps, dtype=scalar).to(compute)

    p = param.to(compute) * keep
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

    outputs = [(param, p), (exp_avg, m), (exp_avg_sq, v)]
    if max_exp_avg_sq is not None:
        outputs.append((max_exp_avg_sq, vmax))
    for dst, new in outputs:
        if update is not None:
            new = torch.where(update.to(dst.device), new, dst.to(compute))
        dst.copy_(new)
    step.copy_(new_step)
