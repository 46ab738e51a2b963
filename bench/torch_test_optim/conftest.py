"""Runs PyTorch's own ``test/test_optim.py`` with ``fused_mup.AdamW`` in AdamW's OptimizerInfo.

``FUSED_MUP_BACKEND`` = ``reference`` | ``triton`` | ``auto``: AdamW's entry in
``torch.testing._internal.common_optimizers.optim_db`` gets, as its ``optim_cls``, a subclass of
``fused_mup.AdamW`` that forces that backend; everything else in the entry (inputs, error
inputs, flags, decorators) stays torch's. ``baseline`` (or unset) substitutes nothing, so the
same selection runs torch.optim.AdamW itself. The subclass is named ``AdamW`` so that test ids
and torch's ``optim_cls.__name__ == "AdamW"`` branches read as they do for torch's class.
"""

from __future__ import annotations

import os

import torch
from torch.testing._internal.common_optimizers import optim_db

BACKEND = os.environ.get("FUSED_MUP_BACKEND", "baseline")

if BACKEND != "baseline":
    import fused_mup

    class AdamW(fused_mup.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, backend=BACKEND, **kwargs)

    (_info,) = [info for info in optim_db if info.optim_cls is torch.optim.AdamW]
    _info.optim_cls = AdamW


def pytest_report_header(config):
    return f"AdamW's OptimizerInfo runs: {BACKEND} (fused_mup.AdamW unless baseline)"
