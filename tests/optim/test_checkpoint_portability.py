"""Copies, pickles and checkpoints that leave fused_mup: nothing reverts to a default silently."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from tolerances import assert_close

import fused_mup
from fused_mup.launcher import KernelConfig

FP32 = torch.float32
SETTINGS = ("backend", "state_dtype", "seed", "kernel_config")


def _trained(backend="reference", **kw):
    torch.manual_seed(0)
    params = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = fused_mup.AdamW(
        params,
        backend=backend,
        state_dtype=FP32,
        seed=7,
        kernel_config=KernelConfig(block=16, chunk_size=32),
        **kw,
    )
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    return params, opt


@pytest.mark.parametrize(
    "how",
    ["deepcopy", "pickle"],
)
def test_copy_and_pickle_keep_the_constructor_settings(how):
    _, opt = _trained(backend="triton")
    if how == "deepcopy":
        other = copy.deepcopy(opt)
    else:
        other = pickle.loads(pickle.dumps(opt))
    settings = lambda o: {key: getattr(o, key) for key in SETTINGS}  # noqa: E731
    assert settings(other) == settings(opt)  # every key at once, not the first that differs
    # torch's test_deepcopy_copies_all_public_attrs
    public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
    assert public(other) == public(opt)
    # The copy steps (its caches are rebuilt, not shared).
    for p in other.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    other.step()


def _groups(params):
    return [
        {"params": params[:1], "lr_mult": 2.0, "wd_mult": 0.5},
        {"params": params[1:2], "lr_mult": 0.25, "wd_mult": 3.0},
        {"params": params[2:], "lr_mult": 0.5, "weight_decay_mode": "independent"},
    ]


def _steps(params, opt, sched, start, n):
    for t in range(start, start + n):
        gen = torch.Generator().manual_seed(t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        sched.step()


def test_to_torch_state_dict_runs_torch_at_our_lr_and_decay():
    """A μP checkpoint (lr_mult, wd_mult, independent decay) continued by torch.optim.AdamW
    matches the fused run; loaded as it is, torch would ignore the multipliers."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3), torch.randn(4, 2)]
    ours = [t.clone().requires_grad_() for t in start]
    opt = fused_mup.AdamW(_groups(ours), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    _steps(ours, opt, sched, 0, 3)
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)

    theirs = [p.detach().clone().requires_grad_() for p in ours]
    ref = torch.optim.AdamW([{"params": [p]} for p in theirs], lr=1e-2, weight_decay=0.1)
    saved.seek(0)
    ref.load_state_dict(fused_mup.to_torch_state_dict(torch.load(saved, weights_only=True)))
    # The scheduler's own state holds unmultiplied base_lrs: create it anew (as documented).
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5, last_epoch=2)
    _steps(ours, opt, sched, 3, 4)
    _steps(theirs, ref, ref_sched, 3, 4)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(b, a, FP32, f"param {i}: torch from the converted checkpoint vs fused")

    # Back into fused_mup: the converted dict says multipliers 1, so nothing applies twice.
    again = fused_mup.AdamW(_groups([p.detach().clone() for p in ours]), lr=1e-2)
    again.load_state_dict(fused_mup.to_torch_state_dict(opt.state_dict()))
    assert [g["lr_mult"] for g in again.param_groups] == [1.0, 1.0, 1.0]


def test_raw_checkpoint_in_torch_would_run_at_the_unmultiplied_lr():
    """Why the helper exists: torch ignores lr_mult, which is what the converted dict fixes."""
    params = [torch.zeros(3, requires_grad=True)]
    opt = fused_mup.AdamW([{"params": params, "lr_mult": 4.0}], lr=1e-2)
    ref = torch.optim.AdamW([torch.zeros(3, requires_grad=True)])
    ref.load_state_dict(opt.state_dict())
    assert ref.param_groups[0]["lr"] == 1e-2  # silently 4x too small
    ref.load_state_dict(fused_mup.to_torch_state_dict(opt.state_dict()))
    assert ref.param_groups[0]["lr"] == pytest.approx(4e-2)


def test_to_torch_state_dict_names_its_argument_when_given_the_optimizer():
    _, opt = _trained()
    with pytest.raises(TypeError, match=r"to_torch_state_dict\(state_dict\).*got AdamW"):
        fused_mup.to_torch_state_dict(opt)


def _warmup_lr(t, lr_max=1e-2, warmup=50):  # nanoGPT: a hand-written warm-up, no scheduler
    return lr_max * min(1.0, (t + 1) / warmup)


def _decay_factors(opt, p, steps, start, lr_mult=1.0):
    """Per-step p_{t+1} / p_t with zero grads (the Adam update is 0: decay alone moves p)."""
    factors = []
    for t in range(start, start + steps):
        for g in opt.param_groups:
            g["lr"] = _warmup_lr(t) * lr_mult
        p.grad = torch.zeros_like(p)
        before = p.detach().clone()
        opt.step()
        factors.append((p.detach() / before).mean().item())
    return torch.tensor(factors, dtype=torch.float64)


def test_independent_decay_checkpointed_during_a_hand_written_warm_up():
    """A checkpoint at step 10 of a 50-step warm-up: the largest lr so far is a fifth of the
    peak. Baked from it, torch decays by lr_max / peak_saved = 5x fused_mup's rate after the
    warm-up (weight 0.41 against 0.82 after 200 steps). Given the schedule's peak, torch's rate
    equals fused_mup's once the warm-up ends, and is never above it (during the warm-up
    fused_mup's running peak is lr itself, a rate a fixed torch weight_decay cannot follow)."""
    wd, lr_mult = 1e-3, 0.5
    kw = dict(lr=1e-2, weight_decay=wd, weight_decay_mode="independent", backend="reference")
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)  # factors exact to 1e-15
    opt = fused_mup.AdamW([{"params": [p], "lr_mult": lr_mult}], **kw)
    _decay_factors(opt, p, 10, 0)
    saved = opt.state_dict()
    with pytest.warns(UserWarning, match="param group 0 has independent weight decay"):
        fused_mup.to_torch_state_dict(saved)
    ours = _decay_factors(opt, p, 190, 10)
    assert ours.prod().item() * (1 - wd) ** 10 == pytest.approx(0.82, abs=0.005)
    runs = {}
    for name, peak in (("given", 1e-2), ("seen", None)):
        q = torch.ones(3, dtype=torch.float64, requires_grad=True)
        torch_opt = torch.optim.AdamW([q])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch_opt.load_state_dict(fused_mup.to_torch_state_dict(saved, peak_lr=peak))
        runs[name] = _decay_factors(torch_opt, q, 190, 10, lr_mult)  # baked: lr · lr_mult
    after = slice(40, None)  # steps 50..199, past the warm-up
    torch.testing.assert_close(runs["given"][after], ours[after], rtol=0, atol=1e-12)
    assert (runs["given"] >= ours - 1e-12).all(), "torch decayed more than fused_mup"
    # The defect this pins: the running peak of step 10 as torch's reference, 5x the decay.
    assert (1 - runs["seen"][after]).mean() == pytest.approx(5 * wd, rel=1e-3)
