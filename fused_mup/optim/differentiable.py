"""``differentiable=True``: the step runs torch's own single-tensor AdamW under autograd.

The kernel and torch's fused CPU kernel update in place outside autograd, so a differentiable
step (meta-learning through the update) goes through ``torch.optim.adamw.adamw`` one group at a
time, with fused_mup's group keys turned into the plain ``lr`` / ``weight_decay`` it takes:
``lr · lr_mult``, and the weight decay whose torch decay ``lr_eff · weight_decay`` is ours
(:attr:`~fused_mup.hyperparams.Effective.torch_weight_decay`). It is torch's code, not ours, so it
keeps torch's per-op rounding and host reads of the step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adamw import adamw as torch_adamw

from fused_mup.hyperparams import effective, peak_lr
from fused_mup.optim.modes import update_mode
from fused_mup.optim.plan import PlannedOptimizer, param_name
from fused_mup.optim.state import prepare_state

__all__ = ["differentiable_step"]


def _refuse(what: str, where: str) -> None:
    raise NotImplementedError(
        f"differentiable=True runs torch's own AdamW, which has no {what} ({where}); use "
        "bf16_update='round' and state_dtype=None with differentiable=True."
    )


def differentiable_step(opt: PlannedOptimizer) -> None:
    """One step of every group through torch's single-tensor AdamW, differentiable=True."""
    for gi, group in enumerate(opt.param_groups):
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        max_exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        for pi, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            where = param_name(opt.param_groups, gi, pi)
            if p.grad.is_sparse:  # before anything is touched, as the other paths
                raise RuntimeError(
                    "AdamW does not support sparse gradients, please consider SparseAdam "
                    f"instead ({where})"
                )
            mode = update_mode(p, group, where)
            if mode.aux_key is not None:
                _refuse(f"bf16_update={mode.name!r}", where)
            if opt.state_dtype not in (None, p.dtype) and not p.is_complex():
                _refuse(f"state_dtype={opt.state_dtype}", where)
            state = prepare_state(opt.state[p], p, group, mode, opt.state_dtype, where)
            if state["step"].requires_grad:  # torch's check and message
                raise RuntimeError(
                    "`requires_grad` is not supported for `step` in differentiable mode"
                )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            continue
        lr = group["lr"]  # a tensor lr keeps its graph through lr_eff
        peak = peak_lr(group, float(lr)) if group["weight_decay_mode"] == "independent" else 0.0
        eff = effective(group, lr, peak=peak)
        beta1, beta2 = group["betas"]  # as given: tensor betas keep their graph too
        torch_adamw(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            foreach=False,
            capturable=group["capturable"],  # and torch's checks of it
            differentiable=True,
            fused=False,
            has_complex=any(torch.is_complex(p) for p in params),
            amsgrad=group["amsgrad"],
            beta1=beta1,
            beta2=beta2,
            lr=eff.lr,
            weight_decay=eff.torch_weight_decay,
            eps=eff.eps,
            maximize=group["maximize"],
        )
