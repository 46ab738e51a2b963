"""torch.compile: a compiled model trains with fused_mup.AdamW, and step() may sit inside a
compiled function (it runs eagerly there: a graph break, because the launch passes raw
addresses that Dynamo cannot trace)."""

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


@pytest.mark.parametrize("compile_backend", BACKENDS)
@pytest.mark.parametrize("device", kernel_devices())
def test_compiled_train_step_calling_step_matches_eager_torch(device, compile_backend):
    torch._dynamo.reset()
    model, ref_model = make(device), None
    ref_model = copy.deepcopy(model)
    opt = fused_mup.AdamW(model.parameters(), lr=1e-2, backend="triton")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    compiled = torch.compile(model, backend=compile_backend)

    @torch.compile(backend=compile_backend)
    def train_step(x):
        loss = compiled(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(4, 8, generator=gen).to(device)
        loss = train_step(x)
        ref_loss = ref_model(x).square().mean()
        ref_loss.backward()
        ref.step()
        ref.zero_grad()
        assert_close(loss.detach(), ref_loss.detach(), torch.float32, "loss")
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(a, b, torch.float32, f"{name} after compiled steps")
    assert all(opt.state[p]["step"].item() == 4 for p in model.parameters())
