"""Test setup: without a GPU the kernel runs in Triton's interpreter on CPU tensors."""

import os

import torch

# Must happen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def kernel_devices() -> list:
    """Devices on which the Triton kernel can run in this process, as pytest params."""
    return [
        pytest.param(
            d,
            marks=pytest.mark.skipif(
                d == "cpu" and not INTERPRETING,
                reason="CPU kernel runs need TRITON_INTERPRET=1; the cuda twin runs instead",
            ),
        )
        for d in DEVICES
    ]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
