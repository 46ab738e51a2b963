"""Every per-param buffer the kernel walks has its param's strides, and a state tensor whose
storage is swapped under the optimizer is picked up: the kernel walks all of them in memory
order through raw addresses, so a mismatch would silently pair the wrong elements."""

from __future__ import annotations

import io

import pytest
import torch
from devices import backend_devices, kernel_devices
from tolerances import assert_close

import fused_mup
from fused_mup.launcher import KernelConfig

TILES = KernelConfig(block=16, chunk_size=32)
CASES = {
    # name: (param dtype, optimizer kwargs, oracle: torch.optim.AdamW or our reference path)
    "fp32-amsgrad": (torch.float32, {"amsgrad": True}, "torch"),
    "bf16-master": (torch.bfloat16, {"bf16_update": "master"}, "reference"),
    "bf16-kahan": (
        torch.bfloat16,
        {"bf16_update": "kahan", "state_dtype": torch.float32},
        "reference",
    ),
}
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_param", "kahan_comp")


def _conv(device, dtype):
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 5, 3).to(device=device, dtype=dtype)  # weight (5, 3, 3, 3)


def _optimizers(case, device):
    dtype, kw, ref_kind = CASES[case]
    ours, theirs = _conv(device, dtype), _conv(device, dtype)
    opt = fused_mup.AdamW(ours.parameters(), lr=1e-2, backend="triton", kernel_config=TILES, **kw)
    if ref_kind == "torch":
        ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, **kw)
    else:
        ref = fused_mup.AdamW(theirs.parameters(), lr=1e-2, backend="reference", **kw)
    return ours, opt, theirs, ref


def _steps(models_opts, start, n, device):
    for step in range(start, start + n):
        for model, opt in models_opts:
            gen = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen).to(device, p.dtype)
            opt.step()


def _check(ours, opt, theirs, ref, what):
    dtype = ours.weight.dtype
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a, b, dtype, f"{what}: {name}")
        for key in STATE_KEYS:
            if key in opt.state[a]:
                buf = opt.state[a][key]
                assert buf.stride() == a.stride(), f"{what}: {key} of {name} keeps old strides"
                if key in ref.state[b]:
                    assert_close(buf.float(), ref.state[b][key].float(), buf.dtype, f"{key}")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device", kernel_devices())
def test_states_follow_a_memory_format_change(device, case):
    ours, opt, theirs, ref = _optimizers(case, device)
    _steps([(ours, opt), (theirs, ref)], 0, 2, device)
    ours.to(memory_format=torch.channels_last)
    theirs.to(memory_format=torch.channels_last)
    assert not ours.weight.is_contiguous()
    _steps([(ours, opt), (theirs, ref)], 2, 2, device)
    _check(ours, opt, theirs, ref, "after model.to(channels_last)")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device", kernel_devices())
def test_states_follow_params_when_a_checkpoint_has_other_strides(device, case):
    ours, opt, theirs, ref = _optimizers(case, device)
    ours.to(memory_format=torch.channels_last)
    theirs.to(memory_format=torch.channels_last)
    _steps([(ours, opt), (theirs, ref)], 0, 2, device)
    # Resume into contiguous params from a checkpoint saved with channels_last states.
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert not saved["state"][0]["exp_avg"].is_contiguous()
    ours.to(memory_format=torch.contiguous_format)
    theirs.to(memory_format=torch.contiguous_format)
    opt = fused_mup.AdamW(
        ours.parameters(), lr=1e-2, backend="triton", kernel_config=TILES, **CASES[case][1]
    )
    opt.load_state_dict(saved)
    _steps([(ours, opt), (theirs, ref)], 2, 2, device)
    _check(ours, opt, theirs, ref, "after a checkpoint with other strides")


def _optimizer_to(optim, device):
    """The widely copied offload snippet: moves every state tensor by swapping its .data."""
    for param in optim.state.values():
        if isinstance(param, torch.Tensor):
            param.data = param.data.to(device)
        elif isinstance(param, dict):
            for subparam in param.values():
                if isinstance(subparam, torch.Tensor):
                    subparam.data = subparam.data.to(device)


@pytest.mark.parametrize("swap", ["all-states", "exp_avg-only"])
@pytest.mark.parametrize("device", kernel_devices())
def test_state_storage_swapped_with_data_is_picked_up(device, swap):
    ours, opt, theirs, ref = _optimizers("fp32-amsgrad", device)
    _steps([(ours, opt), (theirs, ref)], 0, 2, device)
    if swap == "all-states":
        _optimizer_to(opt, "cpu")  # offload ...
        _optimizer_to(opt, device)  # ... and back: new storages, same tensors in opt.state
        for st in opt.state.values():
            st["exp_avg"].data = st["exp_avg"].data.clone()  # new storage even on CPU
            st["step"].data = st["step"].data.clone()
    else:
        for st in opt.state.values():
            st["exp_avg"].data = st["exp_avg"].data.clone()
    _steps([(ours, opt), (theirs, ref)], 2, 3, device)
    saved = opt.state_dict()
    for i, b in enumerate(theirs.parameters()):
        assert saved["state"][i]["step"].item() == ref.state[b]["step"].item() == 5
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert_close(saved["state"][i][key], ref.state[b][key], torch.float32, key)
    _check(ours, opt, theirs, ref, f"after swapping {swap}")


@pytest.mark.parametrize("device", kernel_devices())
def test_new_grads_that_change_layout_are_copied_to_the_params(device):
    """New grad tensors each step whose layout alternates (row-major, then a transposed copy
    with the same values, then row-major again): the kernel walks the grad in the param's
    memory order, so a layout change must be noticed on the step it happens, both ways."""
    torch.manual_seed(0)
    ours = [torch.randn(6, 5, device=device), torch.randn(7, device=device)]
    theirs = [p.clone() for p in ours]
    opt = fused_mup.AdamW(ours, lr=1e-2, backend="triton", kernel_config=TILES)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    for step in range(6):
        gen = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=gen).to(device) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            transposed = step % 3 == 1 and g.dim() == 2
            p.grad = g.t().contiguous().t() if transposed else g.clone()
            q.grad = g.clone()
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a, b, torch.float32, f"step {step}, param {i}")


@pytest.mark.parametrize("backend, device", backend_devices("auto"))
def test_grad_restrided_at_the_same_address_is_paired_by_index(backend, device):
    """A reused grad buffer handed over as a transposed view keeps its data_ptr: the layout
    must be rechecked anyway, or p[i, j] is paired with g[j, i] (max error 0.026 after 3
    steps before the recheck)."""
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(6, 6, device=device))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt = fused_mup.AdamW([ours], lr=1e-2, backend=backend, kernel_config=TILES)
    ref = torch.optim.AdamW([theirs], lr=1e-2)
    buffer = torch.empty(6, 6, device=device)
    for step in range(4):
        buffer.copy_(torch.randn(6, 6))
        view = buffer if step % 2 == 0 else buffer.t()  # same address, other strides
        assert view.data_ptr() == buffer.data_ptr()
        ours.grad, theirs.grad = view, view.clone()
        opt.step()
        ref.step()
        assert_close(ours.detach(), theirs.detach(), torch.float32, what=f"step {step}")
