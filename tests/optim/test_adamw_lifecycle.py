"""The plan's lifecycle: param groups added mid-run, params without grads, storage that moves or
is replaced, state assigned or cleared, kernel configs changed, all against torch.optim.AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
from devices import DEVICES, kernel_devices
from lifecycle_models import (
    FP32,
    assert_models_close,
    baked,
    batch,
    loss_fn,
    model_groups,
    ours,
    tiny_model,
    train,
)
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig


def _pair(device, n=40, **kw):
    a = torch.randn(n, device=device, requires_grad=True)
    opt = ours([a], device, lr=1e-2, **kw)
    r = a.detach().clone().requires_grad_()
    ref = torch.optim.AdamW([r], lr=1e-2, **kw)
    return a, opt, r, ref


def _step_both(a, opt, r, ref, device):
    g = torch.randn(a.shape, device=device)
    a.grad, r.grad = g.clone(), g.clone()
    opt.step()
    ref.step()


@pytest.mark.parametrize("device", kernel_devices())
def test_add_param_group_mid_run(device):
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    p_ours, p_ref = list(m_ours.parameters()), list(m_ref.parameters())
    opt = ours(p_ours[:2], device, lr=1e-2)
    ref = torch.optim.AdamW(p_ref[:2], lr=1e-2)
    train(m_ours, opt, device, 3)
    train(m_ref, ref, device, 3)
    opt.add_param_group({"params": p_ours[2:], "lr": 3e-3, "lr_mult": 2.0})
    ref.add_param_group({"params": p_ref[2:], "lr": 6e-3})
    train(m_ours, opt, device, 4, start=3)
    train(m_ref, ref, device, 4, start=3)
    assert_models_close(m_ours, m_ref, "add_param_group")
    assert opt.state[p_ours[0]]["step"].item() == 7
    assert opt.state[p_ours[-1]]["step"].item() == 4


@pytest.mark.parametrize("device", kernel_devices())
def test_params_without_grad_are_skipped_and_untouched(device):
    a = torch.randn(40, device=device, requires_grad=True)
    b = torch.randn(40, device=device, requires_grad=True)
    b_before = b.detach().clone()
    opt = ours([a, b], device, lr=1e-2)
    for _ in range(3):
        a.grad = torch.randn(40, device=device)
        opt.step()
    assert len(opt.state[b]) == 0 and torch.equal(b, b_before)
    assert opt.state[a]["step"].item() == 3
    b.grad = torch.randn(40, device=device)  # b joins later, with its own step count
    a.grad = None
    opt.step()
    assert opt.state[b]["step"].item() == 1 and opt.state[a]["step"].item() == 3


@pytest.mark.parametrize("device", kernel_devices())
def test_replaced_storage_is_never_written(device):
    """p.data = ... and model.to(memory_format=...) move storage; the old one must stay as is."""
    conv_ours = nn.Conv2d(3, 5, 3).to(device)
    conv_ref = copy.deepcopy(conv_ours)
    opt = ours(conv_ours.parameters(), device, lr=1e-2)
    ref = torch.optim.AdamW(conv_ref.parameters(), lr=1e-2)
    x = torch.randn(2, 3, 6, 6, device=device)

    def steps(n):
        for m, o in ((conv_ours, opt), (conv_ref, ref)):
            for _ in range(n):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()

    steps(2)
    old_weight, old_bias = conv_ours.weight.data, conv_ours.bias.data
    conv_ours.bias.data = conv_ours.bias.data.clone()
    conv_ours.to(memory_format=torch.channels_last)
    conv_ref.to(memory_format=torch.channels_last)
    assert conv_ours.weight.data_ptr() != old_weight.data_ptr()
    old_weight.fill_(float("nan"))  # poison: any write through a stale pointer shows
    old_bias.fill_(float("nan"))
    steps(3)
    assert torch.isnan(old_weight).all() and torch.isnan(old_bias).all()
    assert_close(conv_ours.weight, conv_ref.weight, FP32, "channels_last weight")
    assert_close(conv_ours.bias, conv_ref.bias, FP32, "replaced bias")


@pytest.mark.parametrize("device", kernel_devices())
def test_zero_grad_set_to_none_every_step(device):
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(model_groups(m_ours), device, lr=1e-2)
    ref = torch.optim.AdamW(baked(model_groups(m_ref), 1e-2, 1e-2))
    keep_alive = []
    for step in range(8):
        for m, o in ((m_ours, opt), (m_ref, ref)):
            o.zero_grad(set_to_none=True)
            loss_fn(m, batch(device, step)).backward()
            # Holding old grads forces new addresses on every step.
            keep_alive.append([p.grad for p in m.parameters()])
            o.step()
    assert_models_close(m_ours, m_ref, "fresh grads every step")


@pytest.mark.parametrize("device", kernel_devices())
def test_no_write_outside_params(device):
    """Params carved from one NaN-poisoned buffer with gaps: the gaps must stay NaN."""
    sizes = [1, 63, 64, 65, 130]
    buffer = torch.full((sum(sizes) + 3 * (len(sizes) + 1),), float("nan"), device=device)
    params, offset = [], 3
    for n in sizes:
        view = buffer[offset : offset + n]
        view.copy_(torch.randn(n, device=device))
        params.append(nn.Parameter(view))
        offset += n + 3
    opt = ours(params, device, lr=1e-2)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    # 12-byte offsets: the kernel's unaligned accesses ran (its 16-byte check failed).
    assert any(p.data_ptr() % 16 for p in params)
    mask = torch.ones_like(buffer, dtype=torch.bool)
    offset = 3
    for n in sizes:
        mask[offset : offset + n] = False
        offset += n + 3
    assert torch.isnan(buffer[mask]).all(), "the kernel wrote outside a param"
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("device", kernel_devices())
def test_mixed_dtypes_make_one_launch_each(device):
    a = torch.randn(50, device=device, requires_grad=True)
    b = torch.randn(50, device=device, dtype=torch.bfloat16, requires_grad=True)
    opt = ours([a, b], device, lr=1e-2)
    ref = torch.optim.AdamW([a.detach().clone().requires_grad_()], lr=1e-2)
    for _ in range(3):
        g = torch.randn(50, device=device)
        a.grad, b.grad = g.clone(), g.bfloat16()
        ref.param_groups[0]["params"][0].grad = g.clone()
        opt.step()
        ref.step()
    assert len(opt._planner.plan.buckets) == 2
    assert_close(a, ref.param_groups[0]["params"][0], FP32, "fp32 param beside a bf16 one")


@pytest.mark.skipif(len(DEVICES) < 2, reason="needs CUDA; the CPU version is the dtype test above")
def test_params_on_two_devices_are_grouped_by_device():
    a = torch.randn(50, requires_grad=True)
    b = torch.randn(50, device="cuda", requires_grad=True)
    opt = fused_mup.AdamW([a, b], lr=1e-2)  # auto: reference path on CPU, kernel on CUDA
    ra, rb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = torch.optim.AdamW([ra, rb], lr=1e-2)
    for _ in range(3):
        ga, gb = torch.randn(50), torch.randn(50, device="cuda")
        a.grad, b.grad, ra.grad, rb.grad = ga, gb, ga.clone(), gb.clone()
        opt.step()
        ref.step()
    assert_close(a, ra, FP32, "cpu param")
    assert_close(b, rb, FP32, "cuda param")
    assert opt.state[b]["step"].device.type == "cuda"


@pytest.mark.parametrize("device", kernel_devices())
def test_state_dict_assigned_per_param_is_picked_up(device):
    """ZeroRedundancyOptimizer and DCP assign ``opt.state[p] = {...}`` directly."""
    a = torch.randn(40, device=device, requires_grad=True)
    opt = ours([a], device, lr=1e-2)
    ref = torch.optim.AdamW([a.detach().clone().requires_grad_()], lr=1e-2)
    r = ref.param_groups[0]["params"][0]
    for _ in range(2):
        g = torch.randn(40, device=device)
        a.grad, r.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    old = opt.state[a]
    opt.state[a] = {k: v.clone() for k, v in old.items()}
    for v in old.values():
        v.fill_(float("nan"))  # poison: a step through the old tables would show
    g = torch.randn(40, device=device)
    a.grad, r.grad = g.clone(), g.clone()
    opt.step()
    ref.step()
    assert_close(a, r, FP32, "after replacing the state dict")
    assert opt.state[a]["step"].item() == 3


@pytest.mark.parametrize("device", kernel_devices())
def test_state_entries_replaced_or_cleared_are_picked_up(device):
    a, opt, r, ref = _pair(device)
    _step_both(a, opt, r, ref, device)
    # "move the optimizer state" loops assign entries of a param's state dict.
    for key, value in list(opt.state[a].items()):
        opt.state[a][key] = value.clone()
    for key, value in list(ref.state[r].items()):
        ref.state[r][key] = value.clone()
    _step_both(a, opt, r, ref, device)
    assert_close(a, r, FP32, "after replacing state entries")
    opt.state.clear()
    ref.state.clear()
    _step_both(a, opt, r, ref, device)
    assert_close(a, r, FP32, "after state.clear()")
    assert opt.state[a]["step"].item() == 1


@pytest.mark.parametrize("device", kernel_devices())
def test_param_shrunk_in_place_is_refused_by_name(device):
    """p.data = p.data[:n] keeps the address; the step must see the new size (torch raises)."""
    a, opt, _, _ = _pair(device)
    a.grad = torch.randn(40, device=device)
    opt.step()
    a.data = a.data[:24]
    a.grad = torch.randn(24, device=device)
    with pytest.raises(RuntimeError, match=r"'exp_avg' of parameter 0 of param group 0"):
        opt.step()


@pytest.mark.parametrize("device", kernel_devices())
def test_param_moved_between_groups_takes_its_new_group(device):
    a = torch.randn(8, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    opt = ours([{"params": [a]}, {"params": [b], "lr": 1.0}], device, lr=0.0)
    for p in (a, b):
        p.grad = torch.ones(8, device=device)
    opt.step()
    # Same flat order, new groups: b now has lr 0.
    opt.param_groups[0]["params"].append(opt.param_groups[1]["params"].pop())
    before = b.detach().clone()
    opt.step()
    assert torch.equal(b, before), "b moved to an lr=0 group but was updated"


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_config_changed_mid_run(device):
    a, opt, r, ref = _pair(device, n=300)
    _step_both(a, opt, r, ref, device)
    opt.kernel_config = KernelConfig(block=16, chunk_size=32)
    _step_both(a, opt, r, ref, device)
    assert_close(a, r, FP32, "after a new tile config")


@pytest.mark.parametrize("device", kernel_devices())
def test_a_clip_no_step_consumed_does_not_leak(device):
    a, opt, r, ref = _pair(device)
    a.grad = torch.full((40,), 1e6, device=device)
    opt.clip_grad_norm_(1e-3)
    opt.zero_grad()  # the clipped step never happens
    _step_both(a, opt, r, ref, device)
    assert_close(a, r, FP32, "zero_grad dropped the pending clip")
    a.grad = torch.full((40,), 1e6, device=device)
    opt.clip_grad_norm_(1e-3)
    a.grad = torch.randn(40, device=device)  # new grads after the clip: its norm is stale
    r.grad = a.grad.clone()
    with pytest.warns(RuntimeWarning, match="grads changed between clip_grad_norm_"):
        opt.step()
    ref.step()
    assert_close(a, r, FP32, "a stale clip is not applied")
