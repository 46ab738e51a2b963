"""Every private torch API that fused_mup calls, in one place, with the versions tested.

Tested on torch 2.10.0 (triton 3.6.0, python 3.10), 2.11.0 (triton 3.6.0), 2.13.0 (CPU build)
and 2.14.1 (triton 3.8.0): the ``lowest``, ``gpu_stack``, ``tests`` and ``newest`` sessions of
``noxfile.py``. Every API below is present in all four. Where one has a fallback, the fallback
is tested with the API removed (``tests/test_torch_compat.py``).

Private names the package calls, where, and what happens where one is missing:

- ``torch._fused_adamw_``: torch's fused CPU AdamW, called by ``optim/cpu_fused.py`` through
  :func:`fused_adamw_` (and stubbed by the host-cost benches in ``bench/``). Missing:
  :func:`fused_adamw_` runs the reference path, ``fused_mup.reference.adamw_step_``, per tensor,
  with the op's contract.
- ``torch._foreach_add_``, ``torch._foreach_sub_``, ``torch._foreach_mul_``: the step counts and
  the lr=0 decay in ``optim/cpu_fused.py``. No fallback: torch.optim's default (foreach) path is
  built on them.
- ``GradScaler._scale``, ``GradScaler._per_optimizer_states`` and
  ``torch.amp.grad_scaler.OptState``: ``clip_grad_norm_(grad_scaler=...)`` takes over the
  scaler's unscale pass (``optim/clip.py`` through :func:`scaler_state`; ``optim/adamw.py``).
  Missing: :func:`scaler_state` is None, and ``clip_grad_norm_`` calls ``grad_scaler.unscale_``
  first, then clips the unscaled grads (one more pass over the grads, the same result).
- ``Optimizer._step_supports_amp_scaling``, and the ``grad_scale`` / ``found_inf`` attributes
  that GradScaler then sets on the optimizer (``optim/adamw.py``): GradScaler's protocol for
  fused optimizers. No fallback: False, the protocol's default, is what the optimizer says
  except for the one step after ``clip_grad_norm_(grad_scaler=...)`` (test_amp_protocol).
- ``torch.distributed.checkpoint._traverse``'s ``get_element`` and ``set_element``
  (``dcp.py``). Missing: :func:`get_element` and :func:`set_element` here are copies with the
  same behaviour.
- The wrapper attributes ``_orig_mod`` (torch.compile), ``_checkpoint_wrapped_module``
  (activation checkpointing) and ``_fsdp_wrapped_module`` (FSDP1), dropped from parameter
  names by ``presets/roles.py``. No fallback: they are only names; a renamed one would stay in
  the parameter names that the presets match.

Tests and benches only (no fallback: a test that cannot import fails, and every nox session
runs them): ``torch.testing._internal.common_optimizers`` (tests/optim/test_torch_optim_db.py,
bench/torch_test_optim), ``torch._subclasses.fake_tensor`` and ``torch._C._nn._parse_to``
(tests/kernels/test_devices.py), ``GradScaler._unscale_grads_`` (tests/optim/test_grad_norm.py).

Behaviour of torch's ``Optimizer`` the package relies on, each guarded by tests that every
session runs: ``load_state_dict`` ends in ``__setstate__``, where the counting state dict is
wrapped again (test_adamw_lifecycle), and global step pre-hooks run for every optimizer
(``register_optimizer_step_pre_hook``: test_ignored_keys).

Public APIs that moved in earlier releases, present in every tested torch:
``torch.distributed.tensor.DTensor`` (``optim/plan.py`` sets it to None where
torch.distributed does not import), ``torch.distributed.fsdp.fully_shard`` (FSDP2; tests),
``torch.compiler.disable`` / ``is_compiling`` / ``reset``, ``torch.amp.GradScaler`` and
``torch.optim.adamw.adamw``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

try:
    from torch.amp.grad_scaler import OptState
except ImportError:  # pragma: no cover - present in every tested torch
    OptState = None

try:
    from torch.distributed.checkpoint._traverse import get_element, set_element
except ImportError:
    get_element = set_element = None

__all__ = [
    "TESTED_TORCH",
    "OptState",
    "fused_adamw_",
    "get_element",
    "scaler_state",
    "set_element",
]

#: The torch releases noxfile.py tests (its sessions' pins).
TESTED_TORCH = ("2.10.0", "2.11.0", "2.13.0", "2.14.1")


def fused_adamw_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    **kwargs: Any,
) -> None:
    """``torch._fused_adamw_``: same arguments and semantics (the steps are already counted;
    ``found_inf`` skips the whole update). Looked up at each call, so that a stub put on torch
    (the host-cost bench's) is what runs."""
    op = getattr(torch, "_fused_adamw_", None) or _fused_adamw_fallback
    op(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kwargs)


def _fused_adamw_fallback(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """The reference path per tensor, with ``torch._fused_adamw_``'s contract."""
    from fused_mup.reference import adamw_step_  # imports the package's tables

    for i, (p, g, m, v, step) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, state_steps)):
        adamw_step_(
            p,
            g,
            m,
            v,
            max_exp_avg_sqs[i] if amsgrad else None,
            # The op takes the step already counted and leaves it alone; the reference counts it.
            step - 1,
            lr=float(lr),
            decay=float(lr) * weight_decay,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            maximize=maximize,
            grad_scale=grad_scale,
            found_inf=found_inf,
        )


def scaler_state(
    grad_scaler: torch.amp.GradScaler, optimizer_id: int
) -> tuple[Tensor | None, dict[str, Any]] | None:
    """GradScaler's scale and its per-optimizer entry (``stage``, ``found_inf_per_device``), or
    None where this torch's GradScaler does not keep them under these names."""
    if OptState is None:
        return None
    states = getattr(grad_scaler, "_per_optimizer_states", None)
    if not isinstance(states, Mapping) or not hasattr(grad_scaler, "_scale"):
        return None
    return grad_scaler._scale, states[optimizer_id]


def _get_element(root: Any, path: tuple[Any, ...], default: Any = None) -> Any:
    """``_traverse.get_element``: the value at ``path`` (str keys, int list indices)."""
    value = root
    for part in path:
        if type(part) is int:
            if not isinstance(value, list) or part >= len(value):
                return default
        elif not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value


def _set_element(root: MutableMapping[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """``_traverse.set_element``: sets ``value`` at ``path``, creating dicts (str keys) and
    lists padded with None (int keys) on the way."""
    container: Any = root
    for key, following in zip(path, path[1:]):
        empty: Any = {} if type(following) is str else []
        if isinstance(container, Mapping):
            container = container.setdefault(key, empty)
        else:
            container.extend([None] * (key + 1 - len(container)))
            if container[key] is None:
                container[key] = empty
            container = container[key]
    last = path[-1]
    if type(last) is int:
        container.extend([None] * (last + 1 - len(container)))
    container[last] = value


if get_element is None or set_element is None:
    get_element, set_element = _get_element, _set_element
