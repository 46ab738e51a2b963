"""One launch per step, no recompile on a new LR, no host-device sync in step()."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from devices import kernel_devices
from fused_mup.kernels import adamw_kernel
from torch import nn

import fused_mup


def six_group_model(device):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(50, 16),
        nn.Linear(16, 32),
        nn.GELU(),
        nn.Linear(32, 16),
        nn.LayerNorm(16),
        nn.Linear(16, 50, bias=False),
    ).to(device)
    m = model
    groups = [
        {"params": [m[0].weight], "lr_mult": 4.0},
        {"params": [m[1].weight, m[3].weight], "lr_mult": 0.25, "wd_mult": 4.0},
        {"params": [m[1].bias, m[3].bias], "weight_decay": 0.0},
        {"params": [m[4].weight], "weight_decay": 0.0, "lr_mult": 2.0},
        {"params": [m[4].bias], "weight_decay": 0.0, "lr_mult": 0.5},
        {"params": [m[5].weight], "lr_mult": 0.125},
    ]
    return model, groups


def backward(model, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 50, (2, 7), generator=gen).to(device)
    model(tokens).square().mean().backward()


@contextlib.contextmanager
def count_launches():
    calls = []
    real_run = adamw_kernel.run

    def counting_run(*args, **kwargs):
        calls.append((args, kwargs))
        return real_run(*args, **kwargs)

    with mock.patch.object(adamw_kernel, "run", counting_run):
        yield calls


@pytest.mark.parametrize("device", kernel_devices())
def test_six_group_fp32_model_is_one_launch_per_step(device):
    model, groups = six_group_model(device)
    opt = fused_mup.AdamW(groups, lr=1e-3, backend="triton")
    for step in range(3):
        opt.zero_grad()
        backward(model, device, step)
        with count_launches() as calls:
            opt.step()
        assert len(calls) == 1, f"step {step}: {len(calls)} launches"
    assert len(opt.param_groups) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CPU version counts run()")
def test_six_group_model_is_one_cuda_kernel_per_step_in_the_profiler():
    model, groups = six_group_model("cuda")
    opt = fused_mup.AdamW(groups, lr=1e-3)
    for step in range(3):  # warm up: compile, tables
        opt.zero_grad()
        backward(model, "cuda", step)
        opt.step()
    opt.zero_grad()
    backward(model, "cuda", 3)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [e for e in kernels if "memcpy" not in e.name.lower()]
    assert [e.name for e in kernels] == ["adamw_kernel"], [e.name for e in kernels]


@pytest.mark.parametrize("device", kernel_devices())
def test_new_lr_never_changes_the_kernel_signature(device):
    """LRs, decays and betas travel in a device table: no float argument, same constexprs."""
    model, groups = six_group_model(device)
    opt = fused_mup.AdamW(groups, lr=1e-3, backend="triton")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    signatures = set()
    for step in range(4):
        opt.zero_grad()
        backward(model, device, step)
        with count_launches() as calls:
            opt.step()
        sched.step()
        (args, kwargs) = calls[0]
        assert not any(isinstance(a, float) for a in args), "a float reached the kernel"
        scalars = tuple(a for a in args if not isinstance(a, torch.Tensor))
        constexprs = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k.isupper()))
        signatures.add((scalars, constexprs))
    assert len(signatures) == 1, signatures


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; CPU version checks the args")
def test_new_lr_compiles_nothing_on_cuda():
    model, groups = six_group_model("cuda")
    opt = fused_mup.AdamW(groups, lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)

    def n_compiled():
        return sum(len(cache[0]) for cache in adamw_kernel.device_caches.values())

    counts = []
    for step in range(5):
        opt.zero_grad()
        backward(model, "cuda", step)
        opt.step()
        sched.step()
        counts.append(n_compiled())
    assert counts[1:] == [counts[0]] * 4, counts


class _SyncTrap:
    """Makes every host read of a tensor raise while active (CPU stand-in for sync debug)."""

    NAMES = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __enter__(self):
        self.patches = [
            mock.patch.object(torch.Tensor, name, self._trap(name)) for name in self.NAMES
        ]
        for p in self.patches:
            p.start()

    def __exit__(self, *exc):
        for p in self.patches:
            p.stop()

    @staticmethod
    def _trap(name):
        def trap(self, *args, **kwargs):
            raise AssertionError(f"step() read a tensor on the host via Tensor.{name}")

        return trap


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("device", kernel_devices())
def test_step_reads_no_tensor_on_the_host(device, backend):
    model, groups = six_group_model(device)
    opt = fused_mup.AdamW(groups, lr=1e-3, backend=backend, amsgrad=True)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        backward(model, device, step)
        # What GradScaler hands over: device tensors for the scale and the inf flag.
        opt.grad_scale = torch.tensor(1.0, device=device)
        opt.found_inf = torch.tensor(float(step == 1), device=device)
        sync = (
            torch.cuda.set_sync_debug_mode if device == "cuda" else lambda mode: None  # noqa: ARG005
        )
        sync("error")
        try:
            with _SyncTrap() if device == "cpu" else contextlib.nullcontext():
                opt.step()
        finally:
            sync("default")
    steps = {st["step"].item() for st in opt.state.values()}
    assert steps == {2.0}, "the found_inf step must not count"
