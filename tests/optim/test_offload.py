"""Offloading frees memory at once: after state or params move off their storage, the
optimizer keeps none of the old storages alive (torch.optim.AdamW keeps none), and the next
step equals torch's.

The three moves large runs make, each with a CPU version that replaces the storage the same way
(a copy on the same device) and a CUDA run that moves to the CPU:

- ``opt.state[p][k] = v.to("cpu")``: RL frameworks between rollouts;
- ``t.data = t.data.to("cpu")`` over params and states: the widely copied ``optimizer_to``;
- ``model.cpu()``: ``Module._apply``, which swaps each param's ``.data``.
"""

from __future__ import annotations

import gc

import pytest
import torch
from devices import backend_devices
from tolerances import assert_close
from torch.multiprocessing.reductions import StorageWeakRef

import fused_mup
from fused_mup.launcher import KernelConfig

TILES = KernelConfig(block=16, chunk_size=32)
MOVES = ("state_item", "optimizer_to", "model_apply")


def _model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3)).to(
        device
    )


def _step(model, opt, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 7, generator=gen).to(next(model.parameters()).device)
    opt.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    opt.step()


def _move(how, model, opt, to):
    """Moves params or states with ``to`` (a tensor -> tensor function), as users do."""
    if how == "state_item":
        for s in opt.state.values():
            for k, v in list(s.items()):
                s[k] = to(v)
    elif how == "optimizer_to":
        for s in opt.state.values():
            for v in s.values():
                v.data = to(v.data)
        for p in model.parameters():
            p.data = to(p.data)
    else:
        model._apply(to)


def _moved_storages(how, model, opt):
    tensors = []
    if how != "model_apply":  # model.cpu() moves the params only, in torch too
        tensors += [v for s in opt.state.values() for v in s.values()]
    if how != "state_item":
        tensors += list(model.parameters())
    return [StorageWeakRef(t.untyped_storage()) for t in tensors]


@pytest.mark.parametrize("backend, device", backend_devices("auto", "reference"))
@pytest.mark.parametrize("how", MOVES)
def test_moved_storages_are_freed_and_the_next_step_matches_torch(how, backend, device):
    ours, theirs = _model(device), _model(device)
    opt = fused_mup.AdamW(ours.parameters(), lr=1e-2, backend=backend, kernel_config=TILES)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    for seed in range(2):
        _step(ours, opt, seed)
        _step(theirs, ref, seed)
    for m in (ours, theirs):
        for p in m.parameters():
            p.grad = None
    old = _moved_storages(how, ours, opt)
    away = (lambda t: t.cpu()) if device != "cpu" else (lambda t: t.clone())
    _move(how, ours, opt, away)
    _move(how, theirs, ref, away)
    gc.collect()
    held = sum(not r.expired() for r in old)
    assert held == 0, f"{held} of {len(old)} moved storages are still alive"
    back = (lambda t: t.to(device)) if device != "cpu" else (lambda t: t.clone())
    _move(how, ours, opt, back)
    _move(how, theirs, ref, back)
    for seed in range(2, 4):
        _step(ours, opt, seed)
        _step(theirs, ref, seed)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a.detach(), b.detach(), torch.float32, what=f"{how}: {name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU version is above")
@pytest.mark.parametrize("how", MOVES)
def test_offload_returns_the_device_memory(how):
    model = _model("cuda")
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2)
    _step(model, opt, 0)
    for p in model.parameters():
        p.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    _move(how, model, opt, lambda t: t.cpu())
    gc.collect()
    freed = before - torch.cuda.memory_allocated()
    state_bytes = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values())
    assert freed >= state_bytes, f"freed {freed} B of {state_bytes} B of state"
