"""Buffers a captured CUDA graph reads by address stay alive and unchanged.

A replay reads the group table, the tensor and chunk tables and the kernel's scratch counters
by raw address. After a capture, an eager step may change a float hyperparameter, see new
grads, a changed grad set, or rebuild its plan; none of that may free or rewrite a captured
buffer (torch.optim.AdamW(capturable=True) keeps no shared mutable buffer either).

The CPU version: the kernel runs in Triton's interpreter and a "capture" is a step during which
``fused_mup.launcher.capturing`` answers True; every buffer that step launched with is checked
by identity (the optimizer still holds it) and by content (unchanged) after each eager change.
The CUDA test captures and replays a real graph.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from devices import kernel_devices
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup import launcher
from fused_mup.launcher import KernelConfig

TILES = KernelConfig(block=32, chunk_size=64)
TABLES = ("tensor_table", "chunk_table", "done_count", "partials", "norm_done_count")


def _model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3)).to(device)


def _reachable_tensors(root) -> dict[int, torch.Tensor]:
    """Every tensor the optimizer holds, by id, through attributes, containers and dataclasses."""
    seen, out, todo = set(), {}, [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out[id(obj)] = obj
        elif isinstance(obj, dict):
            todo += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            todo += list(obj)
        elif dataclasses.is_dataclass(obj):
            todo += [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, (nn.Module, type)):
            todo += list(vars(obj).values())
    return out


def _captured_buffers(opt) -> list[torch.Tensor]:
    plan = opt._planner.plan
    buffers = [getattr(b, name) for b, _ in plan.buckets for name in TABLES]
    return buffers + list(opt._group_table_cache.tables.values())


@pytest.mark.parametrize("device", kernel_devices())
def test_an_eager_step_after_a_capture_keeps_every_captured_buffer(device, monkeypatch):
    model = _model(device)
    lr = torch.tensor(1e-2, device=device)
    groups = [
        {"params": [model[0].weight, model[2].weight], "lr": lr, "lr_mult": 0.5},
        {"params": [model[0].bias], "lr": lr.clone(), "weight_decay": 0.0},
    ]
    opt = fused_mup.AdamW(groups, capturable=True, backend="triton", kernel_config=TILES)
    grads = {p: torch.randn_like(p) for p in model.parameters()}
    for p, g in grads.items():
        p.grad = g
    opt.step()  # eager warm-up
    monkeypatch.setattr(launcher, "capturing", lambda device: True, raising=False)
    opt.step()  # "captured"
    monkeypatch.undo()
    captured = _captured_buffers(opt)
    snapshot = [t.clone() for t in captured]

    def check(after):
        held = _reachable_tensors(opt)
        for i, (t, before) in enumerate(zip(captured, snapshot)):
            assert id(t) in held, f"after {after}: captured buffer {i} is no longer held"
            assert torch.equal(t, before), f"after {after}: captured buffer {i} was rewritten"

    opt.param_groups[0]["eps"] = 1e-6  # a float hyperparameter: a new group table
    opt.step()
    check("a float hyperparameter changed")
    for p in model.parameters():  # new grad tensors: the tensor table's grad column
        p.grad = torch.randn_like(p)
    opt.step()
    check("grads moved")
    model[0].weight.grad = None  # a changed grad set: the chunk table's launched rows
    opt.step()
    check("the grad set changed")
    opt.add_param_group({"params": [model[2].bias], "weight_decay": 0.0})  # a new plan
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    check("the plan was rebuilt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; the CPU version is above")
def test_replay_after_eager_changes_matches_torch_capturable():
    """Capture, change things eagerly, replay: the replays run what was captured, as torch's
    capturable AdamW does with its own graph."""
    ours, theirs = _model("cuda"), _model("cuda")
    opt = fused_mup.AdamW(ours.parameters(), lr=torch.tensor(1e-2, device="cuda"), capturable=True)
    ref = torch.optim.AdamW(
        theirs.parameters(), lr=torch.tensor(1e-2, device="cuda"), capturable=True
    )
    x = torch.randn(8, 6, device="cuda")
    static = {}
    for model, o in ((ours, opt), (theirs, ref)):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                o.zero_grad(set_to_none=False)
                model(x).square().mean().backward()
                o.step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        o.zero_grad(set_to_none=False)
        with torch.cuda.graph(graph):
            model(x).square().mean().backward()
            o.step()
        static[id(o)] = graph
    # An eager step with new grad tensors and another eps between replays: ours retargets
    # nothing the graph reads.
    for model, o in ((ours, opt), (theirs, ref)):
        saved = [p.grad for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        o.param_groups[0]["eps"] = 1e-6
        o.step()
        for p, g in zip(model.parameters(), saved):
            p.grad = g
    for _ in range(3):
        for o in (opt, ref):
            static[id(o)].replay()
    torch.cuda.synchronize()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a.detach(), b.detach(), torch.float32, what=name)
