"""A param group's effective hyperparameters, computed in one place: :func:`effective`.

Every path reads a group through it: the kernel's group table, the capturable table, torch's
fused CPU kernel, ``differentiable=True``, :func:`~fused_mup.to_torch_state_dict` and the
presets' ``bake=True``. ``lr · lr_mult`` and the decay rule are written here and nowhere else.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from torch import Tensor

__all__ = ["Effective", "effective", "peak_floor", "peak_lr"]


class Effective(NamedTuple):
    """What one param group's step uses. The first five fields are the kernel's ``GroupCol``
    columns, by name (``fused_mup.kernels.tables``)."""

    lr: Any  # lr · lr_mult (a tensor where the group's lr is one)
    decay: Any  # fraction of each param weight decay removes this step
    beta1: float
    beta2: float
    eps: float
    peak: Any  # the lr independent decay is relative to; 0.0 for coupled decay
    # The weight_decay that makes torch's decay ``lr_eff · weight_decay`` equal ``decay`` at
    # every lr up to ``peak``: how torch.optim.AdamW runs this group.
    torch_weight_decay: Any


def _as_float(x: Any) -> float:
    return float(x) if isinstance(x, Tensor) else float(x or 0.0)


def peak_floor(group: dict[str, Any]) -> float:
    """The least the peak lr can be: a ``peak_lr`` the group holds (set by the user or recorded
    by earlier steps), OneCycleLR's ``max_lr`` and a scheduler's ``initial_lr``."""
    return max(
        _as_float(group.get("peak_lr")),
        _as_float(group.get("max_lr")),
        _as_float(group.get("initial_lr")),
    )


def peak_lr(group: dict[str, Any], lr: float) -> float:
    """The LR that independent decay is relative to, recorded in ``group["peak_lr"]``.

    The running maximum of the group's lr, never below :func:`peak_floor`: lr never exceeds it,
    so decay never exceeds ``weight_decay · wd_mult`` and ``1 - decay`` stays in [0, 1] whatever
    changes lr (CyclicLR, whose ``initial_lr`` is its minimum, ReduceLROnPlateau, a hand-written
    lr). Saved in checkpoints with the group, so a resumed run keeps it.
    """
    peak = max(lr, peak_floor(group))
    group["peak_lr"] = peak
    return peak


def effective(group: dict[str, Any], lr: Any = None, peak: Any = None) -> Effective:
    """The effective hyperparameters of ``group`` at ``lr`` (default: the group's own).

    lr_eff = lr · lr_mult; decay = lr_eff · weight_decay · wd_mult ("coupled", torch's rule) or
    (lr / peak) · weight_decay · wd_mult ("independent"). Without ``peak``, independent decay
    records and uses :func:`peak_lr`. ``lr`` may be a tensor (``differentiable=True`` keeps its
    graph); independent decay then needs ``peak``, a float or (``capturable=True``) a tensor on
    lr's device, which keeps every result there.
    """
    if lr is None:
        lr = group["lr"]
    lr_mult = group.get("lr_mult", 1.0)
    wd = group["weight_decay"] * group.get("wd_mult", 1.0)
    # A preset group before it reaches an optimizer has no betas / eps: NaN, never a default.
    beta1, beta2 = group.get("betas", (math.nan, math.nan))
    lr_eff = lr * lr_mult
    if group.get("weight_decay_mode", "coupled") == "coupled":
        peak, decay, torch_wd = 0.0, lr_eff * wd, wd
    elif isinstance(peak, Tensor):  # capturable: on the device, no host read; lr 0: no decay
        decay = lr / peak.clamp_min(1e-300) * wd
        torch_wd = wd / (peak * lr_mult).clamp_min(1e-300)
    else:
        if peak is None:
            peak = peak_lr(group, lr)
        decay = lr / peak * wd if peak else 0.0 * lr
        scale = peak * lr_mult
        torch_wd = wd / scale if scale else 0.0
        peak = float(peak)
    return Effective(
        lr_eff,
        decay,
        float(beta1),
        float(beta2),
        float(group.get("eps", math.nan)),
        peak,
        torch_wd,
    )
