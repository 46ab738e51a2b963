"""CPU tensors through torch's own fused CPU AdamW kernel, one call per param group.

``torch._fused_adamw_`` is what ``torch.optim.AdamW(fused=True)`` runs on CPU; calling it per
group with our effective hyperparameters gives our semantics at torch's speed wherever they
agree: per-group lr and decay (``lr_mult``, ``wd_mult``, both decay modes), GradScaler, AMSGrad,
maximize, and clipping folded into the grad scale. What it cannot do (states in another dtype
than the param, the kahan / stochastic / master bf16 modes, non-dense params) stays on the
reference path, ``fused_mup.reference.adamw_step_``, which is also the oracle these calls are tested
against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from fused_mup import torch_compat
from fused_mup.hyperparams import Effective
from fused_mup.kernels.tables import ClipSlot, Update

__all__ = ["CpuFusedGroup", "cpu_fused_step", "takes"]

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def takes(param: Tensor, exp_avg: Tensor, update: Update, dense: bool) -> bool:
    """Whether torch's fused CPU kernel computes our update for this (real, local) param."""
    return (
        param.device.type == "cpu"
        and param.dtype in _DTYPES
        and exp_avg.dtype == param.dtype
        and exp_avg.stride() == param.stride()
        and update == Update.ROUND
        and dense
    )


@dataclass
class CpuFusedGroup:
    """The tensors of one param group that one ``torch._fused_adamw_`` call updates."""

    group: int
    amsgrad: bool
    maximize: bool
    flat: list[int] = field(default_factory=list)  # flat param indices, for the grads
    params: list[Tensor] = field(default_factory=list)  # real, local views
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    max_exp_avg_sqs: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)
    views: bool = False  # some grad needs a real or local view (complex, DTensor)

    def having_grads(self, present: list[bool]) -> CpuFusedGroup:
        """The group without its members that have no grad this step (torch skips those)."""
        keep = [k for k, i in enumerate(self.flat) if present[i]]
        if len(keep) == len(self.flat):
            return self
        pick = lambda xs: [xs[k] for k in keep] if xs else xs  # noqa: E731
        return CpuFusedGroup(
            self.group,
            self.amsgrad,
            self.maximize,
            pick(self.flat),
            pick(self.params),
            pick(self.exp_avgs),
            pick(self.exp_avg_sqs),
            pick(self.max_exp_avg_sqs),
            pick(self.steps),
            self.views,
        )


def _grad_divisor(grad_scale: Tensor | None, clip: Tensor | None) -> Tensor | None:
    """torch's kernel divides grads by ``grad_scale``; fold the clip coefficient into it."""
    if clip is None:
        return grad_scale
    norm = clip[ClipSlot.SUMSQ].sqrt()
    coef = (clip[ClipSlot.MAX_NORM] / (norm + 1e-6)).clamp(max=1.0)  # NaN stays NaN, as torch
    scale = 1.0 if grad_scale is None else grad_scale.reshape(()).float()
    return (scale / coef).reshape(1)


def cpu_fused_step(
    fused: CpuFusedGroup,
    grads: list[Tensor],
    eff: Effective,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    clip: Tensor | None,
) -> None:
    """One group's step: ``grads`` match ``fused.params`` (real, local, same strides), ``row``
    is the group's :func:`~fused_mup.hyperparams.effective` hyperparameters."""
    lr, decay = eff.lr, eff.decay
    divisor = _grad_divisor(grad_scale, clip)
    found = None if found_inf is None else found_inf.reshape(1).float()
    if lr > 0:
        weight_decay = decay / lr  # torch decays by lr * weight_decay
    else:  # no lr to carry the decay: apply it here, and not on a skipped step
        weight_decay = 0.0
        if decay:
            keep = torch.full((), 1.0 - decay)
            if found is not None:
                keep = torch.where(found.reshape(()) == 0, keep, 1.0)
            torch._foreach_mul_(fused.params, keep)
    torch._foreach_add_(fused.steps, 1)
    torch_compat.fused_adamw_(
        fused.params,
        grads,
        fused.exp_avgs,
        fused.exp_avg_sqs,
        fused.max_exp_avg_sqs,
        fused.steps,
        lr=lr,
        beta1=eff.beta1,
        beta2=eff.beta2,
        weight_decay=weight_decay,
        eps=eff.eps,
        amsgrad=fused.amsgrad,
        maximize=fused.maximize,
        grad_scale=divisor,
        found_inf=found,
    )
    if found is not None:
        torch._foreach_sub_(fused.steps, [found.reshape(())] * len(fused.steps))
