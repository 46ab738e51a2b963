"""Copies, pickles and checkpoints that leave fused_mup: nothing reverts to a default silently."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import fused_mup
from fused_mup.launcher import KernelConfig

FP32 = torch.float32
SETTINGS = ("backend", "state_dtype", "seed", "kernel_config")


def _trained(backend="torch", **kw):
    torch.manual_seed(0)
    params = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = fused_mup.AdamW(
        params,
        backend=backend,
        state_dtype=FP32,
        seed=7,
        kernel_config=KernelConfig(block=16, chunk_size=32),
        **kw,
    )
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return params, opt


@pytest.mark.parametrize(
    "how",
    ["deepcopy", "pickle"],
)
def test_copy_and_pickle_keep_the_constructor_settings(how):
    _, opt = _trained(backend="triton")
    if how == "deepcopy":
        other = copy.deepcopy(opt)
    else:
        other = pickle.loads(pickle.dumps(opt))
    for key in SETTINGS:
        assert getattr(other, key) == getattr(opt, key), key
    # torch's test_deepcopy_copies_all_public_attrs
    public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
    assert public(other) == public(opt)
    # The copy steps (its caches are rebuilt, not shared).
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()
