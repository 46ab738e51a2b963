"""``optimizer.state`` that counts its changes, and the lazy creation of one param's state."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from fused_mup.optim.modes import UpdateMode

__all__ = ["CountingStateDict", "ParamState", "is_dense", "layout_strides", "prepare_state"]


def is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense: its elements fill its storage span, in any dim order."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def layout_strides(p: Tensor) -> tuple[int, ...]:
    """The strides of every per-param buffer the kernel walks beside ``p``: ``p``'s own when it
    is dense (the kernel walks all of them in memory order), else the dense order that
    ``torch.empty_like(p)`` picks (the kernel then updates a dense staging copy of ``p``)."""
    if is_dense(p):
        return p.stride()
    return torch.empty_like(p, device="meta").stride()


class ParamState(dict):
    """One param's state. Any change to it counts on the optimizer's state, so a step can
    tell in O(1) that a state tensor was replaced and its tables must be rebuilt."""

    def __init__(self, owner: CountingStateDict, *args: Any) -> None:
        super().__init__(*args)
        self.owner = owner

    def _touch(self) -> None:
        self.owner._touch()

    def __reduce__(self):  # pickles and deep-copies as a plain dict
        return dict, (dict(self),)


def _counting(method_name: str):
    method = getattr(dict, method_name)

    def counted(self, *args, **kwargs):
        self._touch()
        return method(self, *args, **kwargs)

    counted.__name__ = method_name
    return counted


for _name in ("__setitem__", "__delitem__", "clear", "pop", "popitem", "setdefault", "update"):
    setattr(ParamState, _name, _counting(_name))


class CountingStateDict(defaultdict):
    """``optimizer.state`` that counts every change, to it and to each param's state dict,
    so a step can tell in O(1) whether its tables still point at the right tensors
    (ZeroRedundancyOptimizer and DCP assign states directly)."""

    def __init__(self, default_factory: Any = None, *args: Any) -> None:
        super().__init__(default_factory, *args)
        self.version = 0
        # Called on every change (the optimizer drops its plan, so that a state tensor moved
        # off its device is freed now, not at the next step). Not pickled.
        self.on_change: Any = None
        for key, value in list(dict.items(self)):
            dict.__setitem__(self, key, self._own(value))

    def _touch(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _own(self, value: Any) -> Any:
        return ParamState(self, value) if isinstance(value, dict) else value

    def __missing__(self, key: Any) -> ParamState:
        self._touch()
        value = ParamState(self)
        dict.__setitem__(self, key, value)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self._touch()
        super().__setitem__(key, self._own(value))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._touch()
        return super().setdefault(key, self._own(default))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __reduce__(self):  # pickles and deep-copies as torch's defaultdict(dict)
        return defaultdict, (
            dict,
            {k: dict(v) if isinstance(v, dict) else v for k, v in self.items()},
        )


for _name in ("__delitem__", "clear", "pop", "popitem"):
    setattr(CountingStateDict, _name, _counting(_name))


def prepare_state(
    state: dict[str, Any],
    p: Tensor,
    group: dict[str, Any],
    mode: UpdateMode,
    state_dtype: torch.dtype | None,
    where: str,
) -> dict[str, Any]:
    """Creates ``p``'s state lazily; moves it to the param's device and strides; refuses what
    cannot match."""
    if p.is_complex():
        state_dtype = p.dtype
    else:
        state_dtype = state_dtype or p.dtype
    if len(state) == 0:
        # step lives on the param's device, as in torch's fused AdamW, so that the kernel
        # counts it and a GradScaler-skipped step costs no host sync.
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(
            p, dtype=state_dtype, memory_format=torch.preserve_format
        )
        state["exp_avg_sq"] = torch.zeros_like(
            p, dtype=state_dtype, memory_format=torch.preserve_format
        )
    if group["amsgrad"] and "max_exp_avg_sq" not in state:
        state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
    aux_key = mode.aux_key
    if aux_key == "kahan_comp" and aux_key not in state:
        state[aux_key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif aux_key == "master_param" and aux_key not in state:
        state[aux_key] = p.detach().to(torch.float32, memory_format=torch.preserve_format)
    if aux_key:
        # The kernel trusts these dtypes for its pointer arithmetic: enforce them.
        want = torch.float32 if mode.aux_fp32 else p.dtype
        if state[aux_key].dtype != want:
            state[aux_key] = state[aux_key].to(want)
    if aux_key and (state[aux_key].shape != p.shape or state[aux_key].device != p.device):
        raise RuntimeError(
            f"optimizer state '{aux_key}' of {where} has shape {tuple(state[aux_key].shape)} "
            f"on {state[aux_key].device}; the parameter is {tuple(p.shape)} on {p.device}"
        )
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
    for key in keys:
        value = state.get(key)
        if not torch.is_tensor(value):
            raise RuntimeError(f"optimizer state '{key}' of {where} is missing")
        if value.shape != p.shape:
            raise RuntimeError(
                f"optimizer state '{key}' of {where} has shape {tuple(value.shape)}, but "
                f"the parameter has shape {tuple(p.shape)}"
            )
        if value.dtype != state[keys[0]].dtype or value.is_complex() != p.is_complex():
            raise RuntimeError(
                f"optimizer states of {where} disagree in dtype: "
                + ", ".join(f"{k}={state[k].dtype}" for k in keys)
            )
    step = state.get("step")
    if not torch.is_tensor(step):  # an older or hand-written checkpoint: torch converts it too
        step = torch.tensor(float(step or 0.0))
    if (
        step is not state.get("step")
        or step.device != p.device
        or step.dtype != torch.float32
        or step.dim() != 0
    ):
        state["step"] = step.to(device=p.device, dtype=torch.float32).reshape(())
    # Moments, max and helper buffers all take p's layout: after model.to(channels_last), or a
    # checkpoint saved with other strides, the kernel would otherwise pair mismatched elements.
    layout = layout_strides(p)
    for key in keys + ([aux_key] if aux_key else []):
        value = state[key]
        if value.device != p.device or value.stride() != layout:
            moved = torch.empty_like(p, dtype=value.dtype)
            moved.copy_(value)
            state[key] = moved
    return state
