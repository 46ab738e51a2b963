"""torch.compile: a compiled model trains with fused_mup.AdamW, and step(), clip_grad_norm_()
and zero_grad() may sit inside a compiled function (step and the clip run eagerly there: a graph
break, because the launch passes raw addresses that Dynamo cannot trace). On torch 2.11, Dynamo
refused the optimizer's own attribute writes in step() and zero_grad(); these tests run on every
torch of noxfile.py."""

from __future__ import annotations

import copy

import pytest
import torch
from devices import kernel_devices
from tolerances import assert_close
from torch import nn

import fused_mup

# aot_eager compiles the graph without generating C++ (seconds on a CPU); on CUDA, inductor.
BACKENDS = ["aot_eager"] + (["inductor"] if torch.cuda.is_available() else [])


def make(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1)).to(device)


@pytest.mark.parametrize("clip", [None, 0.05], ids=["noclip", "clip"])
@pytest.mark.parametrize("compile_backend", BACKENDS)
@pytest.mark.parametrize("device", kernel_devices())
def test_compiled_train_step_calling_step_matches_eager_torch(device, compile_backend, clip):
    torch.compiler.reset()
    model, ref_model = make(device), None
    ref_model = copy.deepcopy(model)
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2, backend="triton")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    compiled = torch.compile(model, backend=compile_backend)

    @torch.compile(backend=compile_backend)
    def train_step(x):
        loss = compiled(x).square().mean()
        loss.backward()
        if clip is not None:
            opt.clip_grad_norm_(clip)
        opt.step()
        opt.zero_grad()
        return loss

    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(4, 8, generator=gen).to(device)
        loss = train_step(x)
        ref_loss = ref_model(x).square().mean()
        ref_loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(ref_model.parameters(), clip)
        ref.step()
        ref.zero_grad()
        assert_close(loss.detach(), ref_loss.detach(), torch.float32, "loss")
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(a, b, torch.float32, f"{name} after compiled steps")
    assert all(opt.state[p]["step"].item() == 4 for p in model.parameters())


@pytest.mark.parametrize("compile_backend", BACKENDS)
def test_compiled_zero_grad_drops_an_unused_clip(compile_backend):
    """clip_grad_norm_() then zero_grad() inside a compiled function: the clip is dropped (a
    write Dynamo 2.11 refuses inline), so the next step, on new grads, is unclipped, as torch."""
    torch.compiler.reset()
    model = make("cpu")
    ref_model = copy.deepcopy(model)
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)

    @torch.compile(backend=compile_backend)
    def measure_and_forget(x):
        loss = model(x).square().mean()
        loss.backward()
        norm = opt.clip_grad_norm_(1e-3)
        opt.zero_grad()
        return norm

    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(4, 8, generator=gen)
        assert measure_and_forget(x) > 1e-3, "the clip would have scaled these grads"
        assert opt._pending_clip is None, f"step {step}: zero_grad() kept the clip"
        for m, o in ((model, opt), (ref_model, ref)):
            m(x * 3).square().mean().backward()
            o.step()
            o.zero_grad()
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(a, b, torch.float32, f"{name}: steps after a dropped clip")
