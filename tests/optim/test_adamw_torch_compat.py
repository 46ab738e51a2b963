"""Defect classes found by running torch's own test/test_optim.py against fused_mup.AdamW.

Each test is the smallest reproduction of one class, checked against torch.optim.AdamW.
"""

from __future__ import annotations

import copy

import pytest
import torch
from devices import kernel_devices
from tolerances import assert_close

import fused_mup
from fused_mup.launcher import KernelConfig

FP32 = torch.float32
BACKENDS = ["reference", "triton"]


def _pair(device, backend, **kw):
    """Two (10, 5) + (10,) param lists and a fused / torch optimizer on each."""
    torch.manual_seed(0)
    ours = [torch.randn(10, 5, device=device), torch.randn(10, device=device)]
    theirs = [p.clone() for p in ours]
    for p in ours + theirs:
        p.requires_grad_(True)
    cfg = KernelConfig(block=32, chunk_size=64)
    opt = fused_mup.AdamW(ours, backend=backend, kernel_config=cfg, **kw)
    ref = torch.optim.AdamW(theirs, **kw)
    return ours, opt, theirs, ref


def _step(ours, opt, theirs, ref, seed):
    gen = torch.Generator().manual_seed(seed)
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen).to(a.device)
        b.grad = a.grad.clone()
    opt.step()
    ref.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", kernel_devices())
def test_plain_number_step_in_a_checkpoint_is_converted(device, backend):
    """torch's test_load_nontensor_step: a checkpoint whose state["step"] is a float."""
    ours, opt, theirs, ref = _pair(device, backend, amsgrad=True)
    for s in range(3):
        _step(ours, opt, theirs, ref, s)
    for o in (opt, ref):
        sd = copy.deepcopy(o.state_dict())
        for st in sd["state"].values():
            st["step"] = st["step"].item()
        o.load_state_dict(sd)
    for p in ours:
        step = opt.state[p]["step"]
        assert torch.is_tensor(step) and step.dtype == FP32 and step.device == p.device
    for s in range(3, 5):
        _step(ours, opt, theirs, ref, s)
    for a, b in zip(ours, theirs):
        assert_close(a, b, FP32, "after a plain-number step checkpoint")
        assert opt.state[a]["step"].item() == ref.state[b]["step"].item() == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_entries_that_are_not_per_param_dicts(backend):
    """torch's state_dict / load_state_dict hook tests store plain values in optimizer.state."""
    ours, opt, theirs, ref = _pair("cpu", backend)
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
    assert opt.state_dict()["state"]["test"] == 1
    opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("loaded", True))
    opt.load_state_dict(opt.state_dict())
    assert opt.state["loaded"] is True
    _step(ours, opt, theirs, ref, 0)
    sd = opt.state_dict()
    assert sd["state"]["loaded"] is True and sd["state"]["test"] == 1
    assert_close(ours[0], theirs[0], FP32, "a step beside non-dict state entries")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_checkpoint_loads_as_decoupled(backend):
    """torch.optim.AdamW forces decoupled_weight_decay=True on load; so do we."""
    ours, opt, theirs, ref = _pair("cpu", backend, weight_decay=0.1)
    adam = torch.optim.Adam(theirs, weight_decay=0.1)
    for p in theirs:
        p.grad = torch.ones_like(p)
    adam.step()
    saved = adam.state_dict()
    assert saved["param_groups"][0]["decoupled_weight_decay"] is False
    opt.load_state_dict(copy.deepcopy(saved))
    ref.load_state_dict(copy.deepcopy(saved))
    assert ref.param_groups[0]["decoupled_weight_decay"] is True
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert opt.state_dict()["param_groups"][0]["decoupled_weight_decay"] is True


def test_group_asking_for_coupled_l2_decay_is_refused():
    """torch.optim.AdamW would run L2 (Adam) decay for such a group; we have no such rule."""
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="decoupled_weight_decay=False in param group 1"):
        fused_mup.AdamW([{"params": [p]}, {"params": [q], "decoupled_weight_decay": False}])
