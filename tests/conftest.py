"""Test setup: without a GPU the kernel runs in Triton's interpreter on CPU tensors.

Shared helpers live in ``devices.py`` and ``tolerances.py`` beside this file, never here.
"""

import os
import sys
from pathlib import Path

# `python -m pytest` puts the checkout's root on sys.path, where kernels/ (installed only as
# fused_mup.kernels) would shadow the PyPI package `kernels` that transformers imports. The
# package itself comes from the install, so the root is not needed.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
if (mod := sys.modules.get("kernels")) and Path(mod.__file__ or "").resolve().is_relative_to(_ROOT):
    del sys.modules["kernels"]

import pytest  # noqa: E402
import torch  # noqa: E402

# Must happen before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
