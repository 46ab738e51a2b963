"""The group table: one fp64 row of effective hyperparameters per param group (``GroupCol``).

The decay rule is written once, in :func:`decay`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.kernels.tables import GroupCol

__all__ = ["GroupTables", "decay", "group_scalars", "peak_lr"]


def peak_lr(group: dict[str, Any], lr: Any) -> Any:
    """The LR that independent decay is relative to: OneCycleLR's ``max_lr`` (its
    ``initial_lr`` is the warm-up start), else ``initial_lr`` (set by every torch scheduler),
    else the current lr, so that without a scheduler the ratio is 1."""
    return group.get("max_lr", group.get("initial_lr", lr))


def decay(group: dict[str, Any], lr: float) -> float:
    """The fraction of each param that weight decay removes this step.

    coupled (torch's rule): ``lr * lr_mult * weight_decay * wd_mult``;
    independent: ``(lr / peak_lr) * weight_decay * wd_mult``.
    """
    wd_eff = group["weight_decay"] * group["wd_mult"]
    if group["weight_decay_mode"] == "coupled":
        return lr * group["lr_mult"] * wd_eff
    peak = peak_lr(group, lr)
    peak = float(peak) if isinstance(peak, Tensor) else peak
    return (lr / peak if peak else 0.0) * wd_eff


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
            peak = peak_lr(group, lr)
            if group["weight_decay_mode"] == "coupled":
                rows.append([mult, mult * wd_eff, *tail])
                scaled.append((gi, lr, None))
            elif isinstance(peak, Tensor):  # lr * (wd_eff / peak), divided on the device
                rows.append([mult, wd_eff, *tail])
                scaled.append((gi, lr, peak))
            else:  # a float peak folds into the static row
                rows.append([mult, wd_eff / peak if peak else 0.0, *tail])
                scaled.append((gi, lr, None))
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
                table[gi, GroupCol.DECAY] *= lr64 / peak.to(device=device, dtype=torch.float64)
        return table
