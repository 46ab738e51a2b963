"""The group table on each device: one fp64 row per param group (``GroupCol``), built from
:func:`~fused_mup.hyperparams.effective` and uploaded only when a value changed."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fused_mup import launcher
from fused_mup.hyperparams import Effective, effective, peak_floor
from fused_mup.kernels.tables import GroupCol

__all__ = ["GroupTableCache", "host_effective", "tensor_effective"]


def host_effective(param_groups: list[dict[str, Any]]) -> list[Effective]:
    """Each group's :func:`effective` at its lr read on the host (a float or a CPU tensor)."""
    out = []
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
        out.append(effective(group, lr))
    return out


def tensor_effective(param_groups: list[dict[str, Any]]) -> list[Effective]:
    """Each group's :func:`effective` with a tensor lr kept a tensor (``capturable=True``):
    the reference path then computes on the device, with no host read of lr, as torch does."""
    out = []
    for group in param_groups:
        lr = group["lr"]
        independent = group["weight_decay_mode"] == "independent"
        peak = _device_peak(group, lr) if isinstance(lr, Tensor) and independent else None
        out.append(effective(group, lr, peak=peak))
    return out


def _device_peak(group: dict[str, Any], lr: Tensor) -> Tensor:
    """:func:`~fused_mup.hyperparams.peak_lr` for a device tensor lr: a device tensor
    updated in place, so that a CUDA graph replays it (created on an eager step, where reading
    the floats is allowed)."""
    peak = group.get("peak_lr")
    if not isinstance(peak, Tensor) or peak.device != lr.device or peak.dtype != lr.dtype:
        peak = lr.detach().clamp(min=peak_floor(group))
        group["peak_lr"] = peak
    torch.maximum(peak, lr, out=peak)
    return peak


class GroupTableCache:
    """The group table on each device, uploaded only when a value changed."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.tables: dict[torch.device, Tensor] = {}
        # Tables a captured CUDA graph reads by address: kept, never rewritten or freed.
        self.captured: list[Tensor] = []

    def get(self, device: torch.device, rows: list[Effective]) -> Tensor:
        key = tuple(tuple(r[: len(GroupCol)]) for r in rows)
        if key != self.key:
            self.tables = {}  # new tensors: a captured old one stays in self.captured
            self.key = key
        table = self.tables.get(device)
        if table is None:
            table = launcher.upload_group_table(rows, device)
            self.tables[device] = table
        return table

    def capturable(self, param_groups: list[dict[str, Any]], device: torch.device) -> Tensor:
        """The group table from device ops only, so that a CUDA graph replays it.

        Float hyperparameters go into a static table (uploaded when they change, which a graph
        capture refuses); a tensor lr scales its row's LR and DECAY columns on the device: the
        static row is :func:`effective` at lr = peak = 1.
        """
        rows, scaled = [], []
        for gi, group in enumerate(param_groups):
            lr = group["lr"]
            if isinstance(lr, Tensor) and lr.device.type == "cpu" != device.type:
                # A CPU tensor lr for device params (torch's optim_db "Tensor lr with
                # capturable" inputs): read on the host, no sync; a graph bakes its value.
                lr = float(lr)
            if not isinstance(lr, Tensor):
                rows.append(effective(group, lr))
                continue
            if lr.device != device:
                raise ValueError(
                    f"capturable=True: param group {gi}'s lr is on {lr.device}, its params on "
                    f"{device}; put the lr tensor on the params' device."
                )
            rows.append(effective(group, 1.0, peak=1.0))
            coupled = group["weight_decay_mode"] == "coupled"
            scaled.append((gi, lr, None if coupled else _device_peak(group, lr)))
        if tuple(tuple(r[: len(GroupCol)]) for r in rows) != self.key or device not in self.tables:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    "fused_mup.AdamW: float hyperparameters changed during CUDA graph capture; "
                    "make them tensors or run an eager step first."
                )
            self.get(device, rows)
        static = self.tables[device]
        if launcher.capturing(device) and not any(t is static for t in self.captured):
            self.captured.append(static)  # the graph's clone reads it on every replay
        table = static.clone()
        for gi, lr, peak in scaled:
            lr64 = lr.to(dtype=torch.float64)
            if peak is None:
                table[gi, GroupCol.LR : GroupCol.DECAY + 1] *= lr64
            else:
                table[gi, GroupCol.LR] *= lr64
                peak64 = peak.to(device=device, dtype=torch.float64)
                table[gi, GroupCol.DECAY] *= lr64 / peak64.clamp_min(1e-300)  # lr 0: no decay
        return table
