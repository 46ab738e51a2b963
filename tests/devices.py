"""Devices the tests run on: the reference path everywhere, the kernel where it can run."""

import os

import pytest
import torch

__all__ = ["DEVICES", "INTERPRETING", "backend_devices", "kernel_devices"]

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def kernel_devices() -> list:
    """Devices on which the Triton kernel can run in this process, as pytest params."""
    return [
        pytest.param(
            d,
            marks=pytest.mark.skipif(
                d == "cpu" and not INTERPRETING,
                reason="CPU kernel runs need TRITON_INTERPRET=1; the cuda version runs instead",
            ),
        )
        for d in DEVICES
    ]


def backend_devices(*cpu_backends: str) -> list:
    """``(backend, device)`` pytest params: each named backend on CPU tensors, then the kernel
    (``backend="triton"``) on every device where it can run. Ids read ``<backend>-<device>``."""
    out = [pytest.param(b, "cpu", id=f"{b}-cpu") for b in cpu_backends]
    for d in kernel_devices():
        device = d.values[0]
        out.append(pytest.param("triton", device, marks=d.marks, id=f"triton-{device}"))
    return out
