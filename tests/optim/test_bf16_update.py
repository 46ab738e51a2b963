"""bf16 params: Kahan, stochastic rounding and fp32 master weights against plain rounding, and
bf16 states."""

from __future__ import annotations

import io

import pytest
import torch
from devices import kernel_devices
from tolerances import assert_close, rel_rms_error

import fused_mup
from fused_mup.launcher import KernelConfig
from fused_mup.reference import round_stochastic_bf16

SMALL_TILES = KernelConfig(block=64, chunk_size=256)
MODES = ["round", "kahan", "stochastic", "master"]


def run(mode, device, steps, backend="triton", n=192, seed=0, lr=1e-3, **kw):
    """``steps`` AdamW steps on bf16 params with a fixed random grad sequence.

    lr 1e-3 moves |p| ~ 1 by less than half a bf16 ulp (3.9e-3) per step: plain rounding loses
    most updates."""
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(n, generator=gen)
    p = start.bfloat16().to(device).requires_grad_()
    opt = fused_mup.AdamW(
        [p],
        lr=lr,
        weight_decay=0.1,
        bf16_update=mode,
        seed=seed,
        backend=backend,
        kernel_config=SMALL_TILES,
        **kw,
    )
    grads = torch.Generator().manual_seed(2)
    for _ in range(steps):
        p.grad = (torch.randn(n, generator=grads) + 0.3).bfloat16().to(device)
        opt.step()
    return p, opt


def fp32_run(device, steps, n=192, lr=1e-3):
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(n, generator=gen).bfloat16().float().to(device).requires_grad_()
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=0.1)
    grads = torch.Generator().manual_seed(2)
    for _ in range(steps):
        p.grad = (torch.randn(n, generator=grads) + 0.3).bfloat16().float().to(device)
        opt.step()
    return p


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("device", kernel_devices())
def test_kahan_stochastic_master_track_fp32_far_better_than_rounding(device, backend):
    steps = 200
    reference = fp32_run(device, steps)
    start = fp32_run(device, 0)
    drift = (reference - start).norm()
    errors = {}
    for mode in MODES:
        p, _ = run(mode, device, steps, backend=backend)
        errors[mode] = ((p.float() - reference).norm() / drift).item()
    # Rounding loses most of the 200-step drift; the others keep it.
    # Stochastic rounding is unbiased but noisy: its error is a random walk of half-ulp steps
    # (about 0.26 of the drift here), where rounding's is the lost drift itself (about 0.9).
    assert errors["round"] > 0.5, errors
    assert errors["stochastic"] < errors["round"] / 3, errors
    assert errors["kahan"] < errors["round"] / 10 and errors["master"] < errors["round"] / 10
    assert errors["master"] < 0.05 and errors["kahan"] < 0.05, errors


@pytest.mark.parametrize("mode", ["round", "kahan", "master"])
@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_and_reference_path_agree_on_deterministic_modes(device, mode):
    pk, ok = run(mode, device, 20, backend="triton")
    pp, op = run(mode, device, 20, backend="reference")
    assert_close(pk, pp, torch.bfloat16, f"{mode}: kernel vs reference path")
    key = {"kahan": "kahan_comp", "master": "master_param"}.get(mode)
    if key:
        dtype = torch.float32 if mode == "master" else torch.bfloat16
        assert ok.state[pk][key].dtype == dtype
        assert_close(ok.state[pk][key].float(), op.state[pp][key].float(), dtype, key)


@pytest.mark.parametrize("device", kernel_devices())
def test_stochastic_rounding_is_reproducible_from_the_seed(device):
    a, _ = run("stochastic", device, 5, seed=7)
    b, _ = run("stochastic", device, 5, seed=7)
    c, _ = run("stochastic", device, 5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("device", kernel_devices())
def test_stochastic_rounding_is_unbiased(device):
    """4096 copies of 1.0 take one step of +lr: their bf16 mean must land near 1 + lr, where
    rounding to nearest would leave every one at 1.0."""
    n = 4096
    p = torch.ones(n, dtype=torch.bfloat16, device=device, requires_grad=True)
    opt = fused_mup.AdamW(
        [p],
        lr=1e-3,
        weight_decay=0.0,
        bf16_update="stochastic",
        kernel_config=SMALL_TILES,
        backend="triton",
        maximize=True,
    )
    p.grad = torch.ones_like(p)
    opt.step()  # first Adam step moves by exactly lr (up, with maximize)
    mean = p.float().mean().item()
    assert abs(mean - 1.001) < 3e-4, mean  # sd of the mean ~ 7.8e-3 * 0.35 / 64
    # The reference path's helper too.
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.full((n,), 1.001, device=device)
    assert abs(round_stochastic_bf16(x, gen).float().mean().item() - 1.001) < 3e-4


@pytest.mark.parametrize("mode", ["kahan", "master", "stochastic"])
@pytest.mark.parametrize("device", kernel_devices())
def test_helper_buffers_round_trip_through_state_dict(device, mode):
    p_full, o_full = run(mode, device, 10)
    p_half, o_half = run(mode, device, 5)
    buffer = io.BytesIO()
    torch.save(o_half.state_dict(), buffer)
    buffer.seek(0)
    o_new = fused_mup.AdamW(
        [p_half],
        lr=1e-3,
        weight_decay=0.1,
        bf16_update=mode,
        kernel_config=SMALL_TILES,
        backend="triton",
    )
    o_new.load_state_dict(torch.load(buffer))
    key = {"kahan": "kahan_comp", "master": "master_param"}.get(mode)
    if key:
        assert key in o_new.state[p_half]
    grads = torch.Generator().manual_seed(2)
    for _ in range(5):  # replay grads 1..5 to skip, then 5 more as run() gives them
        torch.randn(192, generator=grads)
    for _ in range(5):
        p_half.grad = (torch.randn(192, generator=grads) + 0.3).bfloat16().to(device)
        o_new.step()
    assert torch.equal(p_half, p_full), "resumed run differs from the uninterrupted one"


@pytest.mark.parametrize("device", kernel_devices())
def test_bf16_states_for_fp32_params(device):
    """state_dtype=torch.bfloat16: torch's fp32 math with moments rounded to bf16 each step."""
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(130, generator=gen).to(device)
    ours = base.clone().requires_grad_()
    ref = base.clone().requires_grad_()
    opt = fused_mup.AdamW(
        [ours], lr=1e-2, state_dtype=torch.bfloat16, backend="triton", kernel_config=SMALL_TILES
    )
    topt = torch.optim.AdamW([ref], lr=1e-2)
    for _ in range(10):
        g = torch.randn(130, generator=gen).to(device)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
        for key in ("exp_avg", "exp_avg_sq"):
            topt.state[ref][key].copy_(topt.state[ref][key].bfloat16().float())
    assert opt.state[ours]["exp_avg"].dtype == torch.bfloat16
    assert_close(ours, ref, torch.float32, "fp32 params with bf16 states")
    assert rel_rms_error(opt.state[ours]["exp_avg_sq"], topt.state[ref]["exp_avg_sq"]) < 4e-3


def test_fp16_stochastic_is_refused_by_name():
    p = torch.zeros(4, dtype=torch.float16, requires_grad=True)
    opt = fused_mup.AdamW([p], bf16_update="stochastic")
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="rounds to bfloat16 only; parameter 0 of param group 0"):
        opt.step()
    with pytest.raises(ValueError, match="Invalid bf16_update: 'sometimes'"):
        fused_mup.AdamW([p], bf16_update="sometimes")
