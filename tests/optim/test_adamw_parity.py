"""Trajectory parity with torch.optim.AdamW and with a float64 reference.

Randomised param groups (multipliers, betas, eps, decay), odd shapes (empty, one element, odd,
several chunks), every param dtype, AMSGrad / maximize / decay on and off. The kernel runs with
a small tile config so that a few hundred elements already span several programs.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import pytest
import torch
from devices import kernel_devices
from tolerances import FLOAT64_SLACK, TOLERANCES, assert_close, rel_rms_error

import fused_mup
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)
SHAPES = [(0,), (1,), (7, 13), (127,), (3, 1, 65), (300,), (2, 2)]
STEPS = 10


@dataclass
class GroupSpec:
    shapes: list[tuple[int, ...]]
    lr: float
    lr_mult: float
    weight_decay: float
    wd_mult: float
    betas: tuple[float, float]
    eps: float


def random_groups(seed: int, decay: bool) -> list[GroupSpec]:
    rng = random.Random(seed)
    shapes = SHAPES[:]
    rng.shuffle(shapes)
    n_groups = rng.randint(2, 4)
    cuts = sorted(rng.sample(range(1, len(shapes)), n_groups - 1))
    parts = [shapes[a:b] for a, b in zip([0, *cuts], [*cuts, len(shapes)])]
    return [
        GroupSpec(
            shapes=part,
            lr=rng.choice([1e-3, 3e-3, 1e-2]),
            lr_mult=rng.choice([0.25, 1.0, 4.0]),
            weight_decay=rng.choice([0.01, 0.1, 0.3]) if decay else 0.0,
            wd_mult=rng.choice([0.5, 1.0, 2.0]),
            # beta1 = 0.5 exercises the second form of torch's lerp.
            betas=rng.choice([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)]),
            eps=rng.choice([1e-8, 1e-6]),
        )
        for part in parts
    ]


def make_params(specs: list[GroupSpec], dtype, device, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=gen).to(dtype).to(device).requires_grad_() for s in spec.shapes]
        for spec in specs
    ]


def clone_params(groups, dtype=None):
    return [[p.detach().clone().to(dtype or p.dtype).requires_grad_() for p in g] for g in groups]


def torch_groups(specs, params):
    # torch has no multipliers: bake them, in the same fp64 products fused_mup forms.
    return [
        {
            "params": ps,
            "lr": s.lr * s.lr_mult,
            "weight_decay": s.weight_decay * s.wd_mult,
            "betas": s.betas,
            "eps": s.eps,
        }
        for s, ps in zip(specs, params)
    ]


def fused_groups(specs, params):
    return [
        {
            "params": ps,
            "lr": s.lr,
            "lr_mult": s.lr_mult,
            "weight_decay": s.weight_decay,
            "wd_mult": s.wd_mult,
            "betas": s.betas,
            "eps": s.eps,
        }
        for s, ps in zip(specs, params)
    ]


def round_to(dtype):
    """After a step, rounds fp32 params and states to ``dtype`` storage, as the kernel stores."""

    def post_step(opt, params):
        for group in params:
            for p in group:
                p.data.copy_(p.data.to(dtype).float())
                for key, value in opt.state[p].items():
                    if key != "step":
                        value.copy_(value.to(dtype).float())

    return post_step


def run_trajectory(runs, steps: int, seed: int, dtype: torch.dtype):
    """Feeds the same ``dtype``-rounded grads to every (optimizer, params, post_step) run."""
    gen = torch.Generator().manual_seed(seed + 1)
    reference_params = runs[0][1]
    for _ in range(steps):
        grads = [
            [torch.randn(p.shape, generator=gen).to(dtype) for p in g] for g in reference_params
        ]
        for opt, params, post_step in runs:
            for g_group, p_group in zip(grads, params):
                for g, p in zip(g_group, p_group):
                    p.grad = g.to(p.dtype).to(p.device)
            opt.step()
            if post_step is not None:
                post_step(opt, params)


FLAGS = {
    "plain": dict(amsgrad=False, maximize=False, decay=True),
    "amsgrad": dict(amsgrad=True, maximize=False, decay=True),
    "maximize": dict(amsgrad=False, maximize=True, decay=True),
    "amsgrad-maximize-nodecay": dict(amsgrad=True, maximize=True, decay=False),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("flags", list(FLAGS), ids=list(FLAGS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("device", kernel_devices())
def test_trajectory_matches_torch_adamw(device, dtype_name, flags):
    """Kernel and reference path against torch.optim.AdamW over 10 steps.

    fp32: directly. bf16 / fp16: torch.optim.AdamW computing in fp32 with its params and states
    rounded to the low-precision dtype after every step is the same algorithm as ours (fp32
    math, one rounding at the store); torch's native low-precision run rounds after every op, so
    against it we check accuracy instead: ours is no further from a float64 run than torch is.
    """
    dtype = DTYPES[dtype_name]
    f = FLAGS[flags]
    seed = zlib.crc32(f"{dtype_name}-{flags}".encode()) % 1000
    specs = random_groups(seed, decay=f["decay"])
    base = make_params(specs, dtype, device, seed)
    low_precision = dtype != torch.float32
    p_kernel, p_reference, p_native = clone_params(base), clone_params(base), clone_params(base)
    p_torch = clone_params(base, torch.float32)
    p_f64 = clone_params(base, torch.float64)
    opts = dict(amsgrad=f["amsgrad"], maximize=f["maximize"])
    opt_kernel = fused_mup.AdamW(
        fused_groups(specs, p_kernel), backend="triton", kernel_config=SMALL_TILES, **opts
    )
    opt_reference = fused_mup.AdamW(fused_groups(specs, p_reference), backend="reference", **opts)
    opt_torch = torch.optim.AdamW(torch_groups(specs, p_torch), **opts)
    runs = [
        (opt_torch, p_torch, round_to(dtype) if low_precision else None),
        (opt_kernel, p_kernel, None),
        (opt_reference, p_reference, None),
        (torch.optim.AdamW(torch_groups(specs, p_f64), **opts), p_f64, None),
    ]
    if low_precision:
        opt_native = torch.optim.AdamW(torch_groups(specs, p_native), **opts)
        runs.append((opt_native, p_native, None))
    run_trajectory(runs, STEPS, seed, dtype)

    flat = lambda groups: [p for g in groups for p in g]  # noqa: E731
    for i, (pt, pk, pr, p64, pn) in enumerate(
        zip(flat(p_torch), flat(p_kernel), flat(p_reference), flat(p_f64), flat(p_native))
    ):
        where = f"param {i} {tuple(pt.shape)}"
        oracle = "torch.optim.AdamW" + (f" (fp32 math, {dtype_name} storage)" * low_precision)
        assert_close(pk.float(), pt, dtype, f"{where}: kernel vs {oracle}")
        assert_close(pr.float(), pt, dtype, f"{where}: reference path vs {oracle}")
        assert_close(pk, pr, dtype, f"{where}: kernel vs reference path")
        if not low_precision:
            assert_close(pk, p64.float(), dtype, f"{where}: kernel vs float64 reference")
        elif pt.numel():
            ours, theirs = rel_rms_error(pk, p64), rel_rms_error(pn, p64)
            assert ours <= FLOAT64_SLACK * theirs or not torch.isfinite(pn).all(), (
                f"{where}: kernel error vs float64 {ours:.3g} > torch {dtype_name}'s {theirs:.3g}"
            )
        st, sk, sr = opt_torch.state[pt], opt_kernel.state[pk], opt_reference.state[pr]
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if f["amsgrad"] else [])
        for key in keys:
            assert sk[key].dtype == sr[key].dtype == dtype, f"{where}: {key} dtype"
            assert_close(sk[key].float(), st[key], dtype, f"{where}: kernel {key}")
            assert_close(sr[key].float(), st[key], dtype, f"{where}: reference {key}")
        assert sk["step"].item() == st["step"].item() == STEPS
        assert sr["step"].item() == STEPS


@pytest.mark.parametrize("device", kernel_devices())
def test_float64_reference_tracks_fp32_over_30_steps(device):
    """A longer fp32 trajectory, default tiles: as close to float64 as torch's fp32 run is."""
    shapes = [(70_000,), (33, 17)]  # 70k elements span two default 64k chunks
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(s, generator=gen).to(device) for s in shapes]
    p32 = [b.clone().requires_grad_() for b in base]
    t32 = [b.clone().requires_grad_() for b in base]
    p64 = [b.double().requires_grad_() for b in base]
    ours = fused_mup.AdamW(p32, lr=3e-3, weight_decay=0.05, backend="triton")
    theirs = torch.optim.AdamW(t32, lr=3e-3, weight_decay=0.05)
    ref = torch.optim.AdamW(p64, lr=3e-3, weight_decay=0.05)
    for _ in range(30):
        for a, t, b in zip(p32, t32, p64):
            g = torch.randn(a.shape, generator=gen).to(device)
            a.grad, t.grad, b.grad = g.clone(), g.clone(), g.double()
        for o in (ours, theirs, ref):
            o.step()
    for i, (a, t, b) in enumerate(zip(p32, t32, p64)):
        assert_close(a, t, torch.float32, f"param {i} after 30 steps vs torch fp32")
        err_ours, err_torch = rel_rms_error(a, b), rel_rms_error(t, b)
        assert err_ours <= FLOAT64_SLACK * err_torch, (
            f"param {i}: error vs float64 {err_ours:.3g}, torch fp32's {err_torch:.3g}"
        )
        assert_close(
            ours.state[a]["exp_avg_sq"],
            ref.state[b]["exp_avg_sq"].float(),
            torch.float32,
            f"exp_avg_sq {i} vs float64",
        )


@pytest.mark.parametrize("device", kernel_devices())
def test_complex_params_update_through_view_as_real(device):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(5, 3, dtype=torch.complex64, generator=gen).to(device)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = fused_mup.AdamW([a], lr=1e-2, backend="triton", kernel_config=SMALL_TILES)
    ref = torch.optim.AdamW([b], lr=1e-2)
    for _ in range(STEPS):
        g = torch.randn(5, 3, dtype=torch.complex64, generator=gen).to(device)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert_close(a, b, torch.complex64, "complex param")
    assert ours.state[a]["exp_avg"].dtype == torch.complex64
    assert_close(ours.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"], torch.complex64, "v")


@pytest.mark.parametrize("device", kernel_devices())
def test_fp32_states_for_bf16_params_beat_bf16_states(device):
    """state_dtype=torch.float32 keeps moments in fp32 and tracks the float64 run closer."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(257, generator=gen).to(device)
    p16 = base.bfloat16().requires_grad_()
    p16_f32s = base.bfloat16().requires_grad_()
    p64 = base.bfloat16().double().requires_grad_()
    o16 = fused_mup.AdamW([p16], lr=1e-2, backend="triton", kernel_config=SMALL_TILES)
    o32 = fused_mup.AdamW(
        [p16_f32s],
        lr=1e-2,
        backend="triton",
        state_dtype=torch.float32,
        kernel_config=SMALL_TILES,
    )
    ref = torch.optim.AdamW([p64], lr=1e-2)
    for _ in range(STEPS):
        g = torch.randn(257, generator=gen).to(device) * 1e-3
        p16.grad, p16_f32s.grad, p64.grad = g.bfloat16(), g.bfloat16(), g.bfloat16().double()
        for o in (o16, o32, ref):
            o.step()
    assert o32.state[p16_f32s]["exp_avg"].dtype == torch.float32
    assert o16.state[p16]["exp_avg"].dtype == torch.bfloat16
    err32 = rel_rms_error(o32.state[p16_f32s]["exp_avg"], ref.state[p64]["exp_avg"])
    err16 = rel_rms_error(o16.state[p16]["exp_avg"], ref.state[p64]["exp_avg"])
    assert err32 < TOLERANCES[torch.float32]["rel"] * 10 < err16
