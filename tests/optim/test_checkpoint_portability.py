"""Copies, pickles and checkpoints that leave fused_mup: nothing reverts to a default silently."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from tolerances import assert_close

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
    settings = lambda o: {key: getattr(o, key) for key in SETTINGS}  # noqa: E731
    assert settings(other) == settings(opt)  # every key at once, not the first that differs
    # torch's test_deepcopy_copies_all_public_attrs
    public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
    assert public(other) == public(opt)
    # The copy steps (its caches are rebuilt, not shared).
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()


def _groups(params):
    return [
        {"params": params[:1], "lr_mult": 2.0, "wd_mult": 0.5},
        {"params": params[1:2], "lr_mult": 0.25, "wd_mult": 3.0},
        {"params": params[2:], "lr_mult": 0.5, "weight_decay_mode": "independent"},
    ]


def _steps(params, opt, sched, start, n):
    for t in range(start, start + n):
        gen = torch.Generator().manual_seed(t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        sched.step()


def test_to_torch_state_dict_runs_torch_at_our_lr_and_decay():
    """A μP checkpoint (lr_mult, wd_mult, independent decay) continued by torch.optim.AdamW
    matches the fused run; loaded as it is, torch would ignore the multipliers."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3), torch.randn(4, 2)]
    ours = [t.clone().requires_grad_() for t in start]
    opt = fused_mup.AdamW(_groups(ours), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    _steps(ours, opt, sched, 0, 3)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)

    theirs = [p.detach().clone().requires_grad_() for p in ours]
    ref = torch.optim.AdamW([{"params": [p]} for p in theirs], lr=1e-2, weight_decay=0.1)
    saved.seek(0)
    ref.load_state_dict(fused_mup.to_torch_state_dict(torch.load(saved, weights_only=True)))
    # The scheduler's own state holds unmultiplied base_lrs: create it anew (as documented).
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5, last_epoch=2)
    _steps(ours, opt, sched, 3, 4)
    _steps(theirs, ref, ref_sched, 3, 4)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(b, a, FP32, f"param {i}: torch from the converted checkpoint vs fused")

    # Back into fused_mup: the converted dict says multipliers 1, so nothing applies twice.
    again = fused_mup.AdamW(_groups([p.detach().clone() for p in ours]), lr=1e-2)
    again.load_state_dict(fused_mup.to_torch_state_dict(opt.state_dict()))
    assert [g["lr_mult"] for g in again.param_groups] == [1.0, 1.0, 1.0]


def test_raw_checkpoint_in_torch_would_run_at_the_unmultiplied_lr():
    """Why the helper exists: torch ignores lr_mult, which is what the converted dict fixes."""
    params = [torch.zeros(3, requires_grad=True)]
    opt = fused_mup.AdamW([{"params": params, "lr_mult": 4.0}], lr=1e-2)
    ref = torch.optim.AdamW([torch.zeros(3, requires_grad=True)])
    ref.load_state_dict(opt.state_dict())
    assert ref.param_groups[0]["lr"] == 1e-2  # silently 4x too small
    ref.load_state_dict(fused_mup.to_torch_state_dict(opt.state_dict()))
    assert ref.param_groups[0]["lr"] == pytest.approx(4e-2)
