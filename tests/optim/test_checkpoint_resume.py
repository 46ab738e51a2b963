"""Checkpoints mid-run: a resumed run equals the uninterrupted one; torch.optim.AdamW
checkpoints load into fused_mup and back, keeping our multipliers and fp32 states."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from devices import kernel_devices
from lifecycle_models import (
    assert_models_close,
    baked,
    batch,
    loss_fn,
    model_groups,
    ours,
    tiny_model,
    train,
)

import fused_mup


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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
