"""``to_torch_state_dict``: a fused_mup checkpoint that ``torch.optim.AdamW`` runs as we do."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fused_mup.hyperparams import effective, peak_floor

__all__ = ["to_torch_state_dict"]

# Group keys that hold an lr, as schedulers record them: scaled with lr when baking lr_mult.
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def to_torch_state_dict(
    state_dict: dict[str, Any], *, peak_lr: float | list[float] | None = None
) -> dict[str, Any]:
    """A copy of a ``fused_mup.AdamW`` state dict that ``torch.optim.AdamW`` runs as we do.

    torch ignores group keys it does not know, so a checkpoint with ``lr_mult`` / ``wd_mult``
    loaded as it is would run at the unmultiplied lr and decay, silently. This bakes them in:
    each group's ``lr`` (and the ``initial_lr`` / ``max_lr`` / ``min_lr`` that schedulers keep in
    the group) is multiplied by ``lr_mult``, and ``weight_decay`` becomes
    :attr:`~fused_mup.hyperparams.Effective.torch_weight_decay`: ``weight_decay · wd_mult``
    for coupled decay, ``weight_decay · wd_mult / (peak · lr_mult)`` for independent decay. The
    result says ``lr_mult = wd_mult = 1`` and ``"coupled"``, so loading it back into fused_mup
    does not apply the multipliers twice.

    Independent decay is relative to the schedule's peak lr. The checkpoint knows a scheduler's
    ``max_lr`` / ``initial_lr`` and the largest lr seen so far; a hand-written warm-up that will
    still raise lr is invisible to it, and torch would then decay more than fused_mup. Pass
    ``peak_lr`` (one value, or one per group) to give the schedule's peak; without it, a group
    whose lr is still at its running peak with no scheduler key gets a warning.

    An LR scheduler's own state dict (its ``base_lrs``) is not part of this: create the scheduler
    anew on the torch optimizer, or multiply its ``base_lrs`` by each group's ``lr_mult``.

    Args:
        state_dict: ``fused_mup.AdamW.state_dict()`` (not the optimizer itself).
        peak_lr: the schedule's peak lr, for independent-decay groups (keyword only).
    """
    if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict:
        raise TypeError(
            "to_torch_state_dict(state_dict): expected an optimizer state dict "
            f"(optimizer.state_dict()), got {type(state_dict).__name__}"
        )
    out = copy.deepcopy(state_dict)
    groups = out["param_groups"]
    peaks = peak_lr if isinstance(peak_lr, (list, tuple)) else [peak_lr] * len(groups)
    if len(peaks) != len(groups):
        raise ValueError(f"peak_lr: {len(peaks)} values for {len(groups)} param groups")
    for gi, (group, given) in enumerate(zip(groups, peaks)):
        lr = group["lr"]
        lr = float(lr) if isinstance(lr, Tensor) else lr
        peak = max(lr, peak_floor(group)) if given is None else float(given)
        eff = effective(group, lr, peak=peak)
        independent = group.get("weight_decay_mode", "coupled") == "independent"
        if (
            independent
            and given is None
            and eff.torch_weight_decay
            and lr >= peak
            and not any(k in group for k in ("initial_lr", "max_lr"))
        ):
            warnings.warn(
                f"to_torch_state_dict: param group {gi} has independent weight decay and its "
                f"lr {lr:g} is the largest seen, with no scheduler recording the peak; torch's "
                f"decay is baked relative to {peak:g}. If the schedule will raise lr further "
                "(a warm-up), pass peak_lr=<the schedule's peak lr>, or torch decays more.",
                UserWarning,
                stacklevel=2,
            )
        group["weight_decay"] = eff.torch_weight_decay
        for key in _LR_KEYS:  # each lr a scheduler keeps, at its effective value
            if key in group:
                group[key] = effective(group, group[key], peak=peak).lr
        group.update(lr_mult=1.0, wd_mult=1.0, weight_decay_mode="coupled", peak_lr=None)
    return out
