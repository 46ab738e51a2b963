"""Test setup: without a GPU the kernel runs in Triton's interpreter on CPU tensors.

Shared helpers live in ``devices.py`` and ``tolerances.py`` beside this file, never here.
"""

import os

import pytest
import torch

# Must happen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
