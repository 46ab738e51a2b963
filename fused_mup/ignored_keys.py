"""A warning when another optimizer is handed fused_mup's group keys and would ignore them.

torch's optimizers skip group keys they do not know. A ``fused_mup.AdamW`` checkpoint loaded into
``torch.optim.AdamW``, or ``param_groups(model, "mup")`` without ``bake=True`` given to any torch
optimizer, would then train at the unmultiplied lr and decay, silently. A global step pre-hook
(registered once, when fused_mup's optimizer or presets are imported) warns on the first step
of such an optimizer, and again only if its groups are replaced (``load_state_dict``) or grow
(``add_param_group``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

__all__ = ["IGNORED_KEYS_ATTR", "ignored_key_problems", "install_ignored_keys_hook"]

#: A class attribute that says the optimizer applies fused_mup's group keys itself.
IGNORED_KEYS_ATTR = "_applies_fused_mup_group_keys"

# optimizer -> (id, length) of the param_groups list last checked: load_state_dict makes a new
# list, add_param_group a longer one.
_checked: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[int, int]] = (
    weakref.WeakKeyDictionary()
)
# Where wrappers (ZeroRedundancyOptimizer, Lookahead, accelerate, Lightning) keep the optimizer
# that steps the shared groups.
_INNER = ("optim", "optimizer", "_optimizer", "base_optimizer")
_installed = False


def _num(value: Any) -> float:
    return float(value) if isinstance(value, torch.Tensor) else value


def ignored_key_problems(group: dict[str, Any]) -> list[str]:
    """What an optimizer that ignores fused_mup's keys would get wrong for this group."""
    problems = []
    lr_mult = _num(group.get("lr_mult", 1.0))
    if lr_mult != 1.0:
        problems.append(f"lr_mult={lr_mult!r}")
    decays = _num(group.get("weight_decay", 0.0)) != 0.0
    wd_mult = _num(group.get("wd_mult", 1.0))
    if decays and wd_mult != 1.0:
        problems.append(f"wd_mult={wd_mult!r}")
    if decays and group.get("weight_decay_mode", "coupled") == "independent":
        problems.append("weight_decay_mode='independent'")
    return problems


def _applies_keys(optimizer: Any) -> bool:
    if getattr(type(optimizer), IGNORED_KEYS_ATTR, False):
        return True
    return any(getattr(type(getattr(optimizer, a, None)), IGNORED_KEYS_ATTR, False) for a in _INNER)


def _warn_if_ignored(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # fused_mup.AdamW's own steps leave at the first check: one class attribute lookup.
    if getattr(type(optimizer), IGNORED_KEYS_ATTR, False) or torch.compiler.is_compiling():
        return
    try:  # never break another optimizer's step (unhashable subclasses, odd group values)
        groups = optimizer.param_groups
        seen = (id(groups), len(groups))
        if _checked.get(optimizer) == seen:
            return
        _checked[optimizer] = seen
        if not _applies_keys(optimizer):
            _warn_groups(optimizer, groups)
    except (TypeError, ValueError, AttributeError):
        return


def _warn_groups(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    for index, group in enumerate(groups):
        problems = ignored_key_problems(group)
        if problems:
            warnings.warn(
                f"{type(optimizer).__name__}: param group {index} carries fused_mup's "
                f"{', '.join(problems)}, which this optimizer ignores: it steps with the group's "
                "plain lr and weight_decay. For a fused_mup.AdamW checkpoint, load "
                "fused_mup.to_torch_state_dict(state_dict); for preset groups, use "
                "fused_mup.param_groups(..., bake=True); or use fused_mup.AdamW.",
                UserWarning,
                stacklevel=4,
            )
            return


def install_ignored_keys_hook() -> None:
    """Register the global step pre-hook once per process."""
    global _installed
    if not _installed:
        register_optimizer_step_pre_hook(_warn_if_ignored)
        _installed = True
