"""Schedulers, GradScaler, checkpoints, param groups added mid-run, storage that moves."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from devices import DEVICES, kernel_devices
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup import launcher
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)
FP32 = torch.float32


def tiny_model(device, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(11, 6), nn.Linear(6, 9), nn.GELU(), nn.LayerNorm(9), nn.Linear(9, 11)
    ).to(device)


def model_groups(model, lr_mults=(2.0, 0.5, 1.0), wd=0.1):
    params = list(model.parameters())
    return [
        {"params": params[0:1], "lr_mult": lr_mults[0], "wd_mult": 0.0},
        {"params": params[1:3], "lr_mult": lr_mults[1], "wd_mult": 2.0},
        {"params": params[3:], "lr_mult": lr_mults[2], "weight_decay": wd},
    ]


def baked(groups, defaults_lr, defaults_wd):
    out = []
    for g in groups:
        lr = g.get("lr", defaults_lr)
        wd = g.get("weight_decay", defaults_wd)
        out.append(
            {
                "params": g["params"],
                "lr": lr * g.get("lr_mult", 1.0),
                "weight_decay": wd * g.get("wd_mult", 1.0),
            }
        )
    return out


def batch(device, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 11, (4, 5), generator=gen).to(device)


def loss_fn(model, tokens):
    logits = model(tokens)
    return nn.functional.cross_entropy(logits.reshape(-1, 11), tokens.roll(1, 1).reshape(-1))


def ours(params_or_groups, device, **kw):
    return fused_mup.AdamW(params_or_groups, backend="triton", kernel_config=SMALL_TILES, **kw)


def assert_models_close(a: nn.Module, b: nn.Module, what: str):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert_close(pa, pb, FP32, f"{what}: {name}")


def train(model, opt, device, steps, start=0, scheduler=None, scaler=None, inject_inf_at=()):
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch(device, step))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            if step in inject_inf_at:
                next(model.parameters()).grad.view(-1)[0] = float("inf")
            scaler.step(opt)
            scaler.update()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("device", kernel_devices())
def test_lr_scheduler_rewrites_lr_and_multipliers_stay(device):
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(model_groups(m_ours), device, lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW(baked(model_groups(m_ref), 1e-2, 0.05))
    warmup = lambda s: min(1.0, (s + 1) / 4) * 0.5 ** (s // 5)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, warmup)
    train(m_ours, opt, device, 12, scheduler=s_ours)
    train(m_ref, ref, device, 12, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "LambdaLR")
    assert [g["lr_mult"] for g in opt.param_groups] == [2.0, 0.5, 1.0]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * warmup(12))


@pytest.mark.parametrize("device", kernel_devices())
def test_independent_weight_decay_is_torch_decay_divided_by_peak_lr(device):
    """independent: p *= 1 - (lr / initial_lr) * wd * wd_mult. In torch's coupled terms that is
    weight_decay = wd * wd_mult / (initial_lr * lr_mult), which we hand to torch.optim.AdamW."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    groups = model_groups(m_ours, wd=1e-3)
    for g in groups:
        g["weight_decay_mode"] = "independent"
        g["weight_decay"] = g.get("weight_decay", 2e-3)
    opt = ours(groups, device, lr=1e-2)
    ref_groups = []
    for g, p in zip(groups, model_groups(m_ref)):
        lr = 1e-2 * g["lr_mult"]
        wd = g["weight_decay"] * g["wd_mult"] / lr
        ref_groups.append({"params": p["params"], "lr": lr, "weight_decay": wd})
    ref = torch.optim.AdamW(ref_groups)
    decay = lambda s: 1.0 / (1 + s)  # noqa: E731
    s_ours = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    s_ref = torch.optim.lr_scheduler.LambdaLR(ref, decay)
    train(m_ours, opt, device, 10, scheduler=s_ours)
    train(m_ref, ref, device, 10, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "independent decay")


@pytest.mark.parametrize("device", kernel_devices())
def test_grad_scaler_skips_inf_step_and_matches_torch(device, monkeypatch):
    seen_scales = []
    real_launch = launcher.launch

    def spy(bucket, groups, grad_scale, found_inf, config, **kwargs):
        seen_scales.append(grad_scale)
        return real_launch(bucket, groups, grad_scale, found_inf, config, **kwargs)

    monkeypatch.setattr(launcher, "launch", spy)
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(model_groups(m_ours), device, lr=1e-2)
    ref = torch.optim.AdamW(baked(model_groups(m_ref), 1e-2, 1e-2))
    sc_ours = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=3)
    sc_ref = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=3)
    train(m_ours, opt, device, 4, scaler=sc_ours)
    train(m_ref, ref, device, 4, scaler=sc_ref)

    # The inf step: nothing may change, step counts included; the scale backs off.
    before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in m_ours.parameters()]
    scale_before = sc_ours.get_scale()
    train(m_ours, opt, device, 1, start=4, scaler=sc_ours, inject_inf_at=(4,))
    train(m_ref, ref, device, 1, start=4, scaler=sc_ref, inject_inf_at=(4,))
    assert sc_ours.get_scale() == scale_before / 2 == sc_ref.get_scale()
    for p, old in zip(m_ours.parameters(), before[1]):
        assert torch.equal(p, old), "an inf step changed a param"
    for pid, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            assert torch.equal(value, before[0]["state"][pid][key]), f"inf step changed {key}"

    train(m_ours, opt, device, 5, start=5, scaler=sc_ours)
    train(m_ref, ref, device, 5, start=5, scaler=sc_ref)
    assert_models_close(m_ours, m_ref, "GradScaler")
    # As with torch.optim.AdamW (and so that Lightning allows gradient_clip_val), GradScaler
    # unscales the grads itself and skips the inf step; the fused route, where the kernel
    # unscales, is clip_grad_norm_(grad_scaler=...) (tests/optim/test_grad_norm.py).
    assert opt._step_supports_amp_scaling is False
    assert len(seen_scales) == 9 and all(s.item() == 1 for s in seen_scales)
    steps = {v["step"].item() for v in opt.state_dict()["state"].values()}
    assert steps == {9.0} == {v["step"].item() for v in ref.state_dict()["state"].values()}


@pytest.mark.parametrize("device", kernel_devices())
def test_grad_scaler_with_unscale_and_clip(device):
    """unscale_ first (grads arrive unscaled, grad_scale is None), clip, then step."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(m_ours.parameters(), device, lr=1e-2)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    for model, o in ((m_ours, opt), (m_ref, ref)):
        scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
        for step in range(6):
            o.zero_grad()
            scaler.scale(loss_fn(model, batch(device, step))).backward()
            scaler.unscale_(o)
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            scaler.step(o)
            scaler.update()
    assert_models_close(m_ours, m_ref, "unscale_ + clip")


@pytest.mark.parametrize("device", kernel_devices())
def test_state_dict_round_trip_mid_run(device):
    m_full, m_half = tiny_model(device), tiny_model(device)
    o_full = ours(model_groups(m_full), device, lr=1e-2, amsgrad=True)
    train(m_full, o_full, device, 10)

    o_half = ours(model_groups(m_half), device, lr=1e-2, amsgrad=True)
    train(m_half, o_half, device, 5)
    buffer = io.BytesIO()
    torch.save({"model": m_half.state_dict(), "opt": o_half.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu")  # a CPU copy, as from a checkpoint on disk
    m_new = tiny_model(device, seed=123)
    m_new.load_state_dict(saved["model"])
    o_new = ours(model_groups(m_new, lr_mults=(7.0, 7.0, 7.0)), device, lr=1e-2, amsgrad=True)
    o_new.load_state_dict(saved["opt"])
    # The checkpoint carries lr_mult, so the loaded groups are the saved ones.
    assert [g["lr_mult"] for g in o_new.param_groups] == [2.0, 0.5, 1.0]
    for st in o_new.state.values():
        assert st["step"].device == torch.device(device) and st["step"].item() == 5
        assert st["exp_avg"].device.type == torch.device(device).type
    train(m_new, o_new, device, 5, start=5)
    assert_models_close(m_new, m_full, "resumed vs uninterrupted")


@pytest.mark.parametrize("device", kernel_devices())
def test_torch_checkpoint_loads_into_fused_and_back(device):
    m_torch, m_ref = tiny_model(device), tiny_model(device)
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2)
    train(m_ref, ref, device, 10)

    # torch -> fused_mup at step 5.
    t5 = torch.optim.AdamW(m_torch.parameters(), lr=1e-2)
    train(m_torch, t5, device, 5)
    m_ours = copy.deepcopy(m_torch)
    opt = ours(m_ours.parameters(), device, lr=1e-2)
    opt.load_state_dict(copy.deepcopy(t5.state_dict()))
    train(m_ours, opt, device, 5, start=5)
    assert_models_close(m_ours, m_ref, "torch checkpoint continued by fused_mup")

    # fused_mup -> torch at step 5.
    m_a = tiny_model(device)
    o_a = ours(m_a.parameters(), device, lr=1e-2)
    train(m_a, o_a, device, 5)
    m_b = copy.deepcopy(m_a)
    o_b = torch.optim.AdamW(m_b.parameters(), lr=1e-2)
    o_b.load_state_dict(copy.deepcopy(o_a.state_dict()))
    train(m_b, o_b, device, 5, start=5)
    assert_models_close(m_b, m_ref, "fused_mup checkpoint continued by torch")


def test_torch_checkpoint_keeps_our_multipliers():
    model = tiny_model("cpu")
    t = torch.optim.AdamW(baked(model_groups(model), 1e-2, 1e-2))
    train(model, t, "cpu", 1)
    opt = fused_mup.AdamW(model_groups(model), lr=1e-2)
    opt.load_state_dict(t.state_dict())
    assert [g["lr_mult"] for g in opt.param_groups] == [2.0, 0.5, 1.0]
    assert [g["wd_mult"] for g in opt.param_groups] == [0.0, 2.0, 1.0]


@pytest.mark.parametrize("device", kernel_devices())
def test_fp32_states_survive_checkpoint_of_bf16_params(device):
    model = tiny_model(device).bfloat16()
    opt = ours(model.parameters(), device, state_dtype=torch.float32)
    for step in range(3):
        loss_fn(model, batch(device, step)).float().backward()
        opt.step()
    saved = torch.load(io.BytesIO(_saved(opt.state_dict())), map_location="cpu")
    opt2 = ours(model.parameters(), device, state_dtype=torch.float32)
    opt2.load_state_dict(saved)
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt2.state[p][key].dtype == torch.float32
            assert torch.equal(opt2.state[p][key], opt.state[p][key])


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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


@pytest.mark.parametrize("device", kernel_devices())
def test_independent_decay_is_relative_to_one_cycle_max_lr(device):
    """OneCycleLR's initial_lr is the warm-up start; independent decay uses its max_lr."""
    m_ours, m_ref = tiny_model(device), tiny_model(device)
    opt = ours(m_ours.parameters(), device, lr=1e-2, weight_decay=1e-3)
    for g in opt.param_groups:
        g["weight_decay_mode"] = "independent"
    ref = torch.optim.AdamW(m_ref.parameters(), lr=1e-2, weight_decay=1e-3 / 1e-2)
    s_ours = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    s_ref = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=1e-2, total_steps=10)
    train(m_ours, opt, device, 6, scheduler=s_ours)
    train(m_ref, ref, device, 6, scheduler=s_ref)
    assert_models_close(m_ours, m_ref, "independent decay under OneCycleLR")
