"""The group table: one fp64 row of effective hyperparameters per param group (``GroupCol``).

The decay rule is written once, in :func:`decay`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.kernels.tables import GroupCol

__all__ = [
    "GroupTables",
    "decay",
    "group_scalars",
    "peak_lr",
    "to_torch_state_dict",
    "torch_weight_decay",
]


def _as_float(x: Any) -> float:
    return float(x) if isinstance(x, Tensor) else float(x or 0.0)


def peak_lr(group: dict[str, Any], lr: float) -> float:
    """The LR that independent decay is relative to, kept in ``group["peak_lr"]``.

    It is the running maximum of the group's lr, never below OneCycleLR's ``max_lr``, a
    scheduler's ``initial_lr`` or a ``peak_lr`` the user set: lr never exceeds it, so decay never
    exceeds ``wd_eff`` and the factor ``1 - decay`` stays in [0, 1] whatever changes lr
    (CyclicLR, whose ``initial_lr`` is its minimum, ReduceLROnPlateau, a hand-written lr). It is
    saved in checkpoints with the group, so a resumed run keeps it. Without a scheduler the
    ratio is 1.
    """
    peak = max(
        lr,
        _as_float(group.get("peak_lr")),
        _as_float(group.get("max_lr")),
        _as_float(group.get("initial_lr")),
    )
    group["peak_lr"] = peak
    return peak


def decay(group: dict[str, Any], lr: float) -> float:
    """The fraction of each param that weight decay removes this step.

    coupled (torch's rule): ``lr * lr_mult * weight_decay * wd_mult``;
    independent: ``(lr / peak_lr) * weight_decay * wd_mult`` (:func:`peak_lr`).
    """
    wd_eff = group["weight_decay"] * group["wd_mult"]
    if group["weight_decay_mode"] == "coupled":
        return lr * group["lr_mult"] * wd_eff
    peak = peak_lr(group, lr)
    return (lr / peak if peak else 0.0) * wd_eff


def torch_weight_decay(group: dict[str, Any], peak: float) -> float:
    """The ``weight_decay`` that makes torch's decay ``lr · lr_mult · weight_decay`` equal
    :func:`decay` at every lr: ``weight_decay · wd_mult`` for coupled decay, and
    ``weight_decay · wd_mult / (peak · lr_mult)`` for independent decay relative to ``peak``."""
    wd_eff = group["weight_decay"] * group.get("wd_mult", 1.0)
    if group.get("weight_decay_mode", "coupled") == "coupled":
        return wd_eff
    scale = peak * group.get("lr_mult", 1.0)
    return wd_eff / scale if scale else 0.0


def _device_peak(group: dict[str, Any], lr: Tensor) -> Tensor:
    """:func:`peak_lr` for a device tensor lr: a device tensor updated in place, so that a CUDA
    graph replays it (created on an eager step, where reading the floats is allowed)."""
    peak = group.get("peak_lr")
    if not isinstance(peak, Tensor) or peak.device != lr.device or peak.dtype != lr.dtype:
        start = max(
            _as_float(peak), _as_float(group.get("max_lr")), _as_float(group.get("initial_lr"))
        )
        peak = lr.detach().clamp(min=start)
        group["peak_lr"] = peak
    torch.maximum(peak, lr, out=peak)
    return peak


def group_scalars(param_groups: list[dict[str, Any]]) -> list[float]:
    """The rows of the group table, flattened: fp64 host values in ``GroupCol`` order."""
    values: list[float] = []
    for gi, group in enumerate(param_groups):
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.device.type != "cpu":
                raise NotImplementedError(
                    f"param group {gi}: lr is a {lr.device} tensor; reading it would "
                    "synchronize with the device. Pass a float, a CPU tensor, or use "
                    "capturable=True."
                )
            lr = float(lr)
        beta1, beta2 = group["betas"]
        row = [0.0] * len(GroupCol)
        row[GroupCol.LR] = lr * group["lr_mult"]
        row[GroupCol.DECAY] = decay(group, lr)
        row[GroupCol.BETA1] = float(beta1)
        row[GroupCol.BETA2] = float(beta2)
        row[GroupCol.EPS] = float(group["eps"])
        values += row
    return values


def group_row(values: list[float], gi: int) -> list[float]:
    """Group ``gi``'s row of flattened :func:`group_scalars`."""
    n = len(GroupCol)
    return values[n * gi : n * gi + n]


class GroupTables:
    """The group table on each device, uploaded only when a value changed."""

    def __init__(self) -> None:
        self.values: list[float] | None = None
        self.tables: dict[torch.device, Tensor] = {}

    def get(self, device: torch.device, values: list[float]) -> Tensor:
        if values != self.values:
            self.tables = {}
            self.values = values
        table = self.tables.get(device)
        if table is None:
            table = launcher.group_table(values, device, out=None)
            self.tables[device] = table
        return table

    def capturable(self, param_groups: list[dict[str, Any]], device: torch.device) -> Tensor:
        """The group table from device ops only, so that a CUDA graph replays it.

        Float hyperparameters go into a static table (uploaded when they change, which a graph
        capture refuses); a tensor lr scales its row's LR and DECAY columns on the device.
        """
        rows, scaled = [], []
        for gi, group in enumerate(param_groups):
            lr, mult = group["lr"], group["lr_mult"]
            if isinstance(lr, Tensor) and lr.device.type == "cpu" != device.type:
                # A CPU tensor lr for device params (torch's optim_db "Tensor lr with
                # capturable" inputs): read on the host, no sync; a graph bakes its value.
                lr = float(lr)
            beta1, beta2 = group["betas"]
            tail = [float(beta1), float(beta2), float(group["eps"])]
            if not isinstance(lr, Tensor):
                rows.append([lr * mult, decay(group, lr), *tail])
                continue
            if lr.device != device:
                raise ValueError(
                    f"capturable=True: param group {gi}'s lr is on {lr.device}, its params on "
                    f"{device}; put the lr tensor on the params' device."
                )
            wd_eff = group["weight_decay"] * group["wd_mult"]
            if group["weight_decay_mode"] == "coupled":
                rows.append([mult, mult * wd_eff, *tail])
                scaled.append((gi, lr, None))
            else:  # lr * (wd_eff / peak), divided on the device
                rows.append([mult, wd_eff, *tail])
                scaled.append((gi, lr, _device_peak(group, lr)))
        values = [v for row in rows for v in row]
        if values != self.values or device not in self.tables:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    "fused_mup.AdamW: float hyperparameters changed during CUDA graph capture; "
                    "make them tensors or run an eager step first."
                )
            self.get(device, values)
        table = self.tables[device].clone()
        for gi, lr, peak in scaled:
            lr64 = lr.to(dtype=torch.float64)
            if peak is None:
                table[gi, GroupCol.LR : GroupCol.DECAY + 1] *= lr64
            else:
                table[gi, GroupCol.LR] *= lr64
                peak64 = peak.to(device=device, dtype=torch.float64)
                table[gi, GroupCol.DECAY] *= lr64 / peak64.clamp_min(1e-300)  # lr 0: no decay
        return table


# Group keys that hold an lr, as schedulers record them: scaled with lr when baking lr_mult.
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def to_torch_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``fused_mup.AdamW`` state dict that ``torch.optim.AdamW`` runs as we do.

    torch ignores group keys it does not know, so a checkpoint with ``lr_mult`` / ``wd_mult``
    loaded as it is would run at the unmultiplied lr and decay, silently. This bakes them in:
    each group's ``lr`` (and the ``initial_lr`` / ``max_lr`` / ``min_lr`` that schedulers keep in
    the group) is multiplied by ``lr_mult``, and ``weight_decay`` becomes the value whose torch
    decay ``lr * weight_decay`` is ours at every later lr: ``weight_decay * wd_mult`` for coupled
    decay, ``weight_decay * wd_mult / (peak_lr * lr_mult)`` for independent decay. The result says
    ``lr_mult = wd_mult = 1`` and ``"coupled"``, so loading it back into fused_mup does not apply
    the multipliers twice.

    An LR scheduler's own state dict (its ``base_lrs``) is not part of this: create the scheduler
    anew on the torch optimizer, or multiply its ``base_lrs`` by each group's ``lr_mult``.
    """
    out = copy.deepcopy(state_dict)
    for group in out["param_groups"]:
        lr = group["lr"]
        lr = float(lr) if isinstance(lr, Tensor) else lr
        lr_mult = group.get("lr_mult", 1.0)
        peak = max(
            lr,
            _as_float(group.get("peak_lr")),
            _as_float(group.get("max_lr")),
            _as_float(group.get("initial_lr")),
        )
        group["weight_decay"] = torch_weight_decay(group, peak)
        for key in _LR_KEYS:
            if key in group:
                group[key] = group[key] * lr_mult
        group.update(lr_mult=1.0, wd_mult=1.0, weight_decay_mode="coupled", peak_lr=None)
    return out
