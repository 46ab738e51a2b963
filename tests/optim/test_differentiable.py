"""differentiable=True: torch's own single-tensor AdamW under autograd, with our group keys."""

from __future__ import annotations

import pytest
import torch
from tolerances import assert_close

import fused_mup

FP32 = torch.float32


def _leaves(seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]


def _groups(params, **extra):
    return [
        {"params": params[:1], "lr_mult": 0.5, "wd_mult": 4.0, **extra},
        {"params": params[1:], "lr_mult": 2.0, "weight_decay": 0.0, **extra},
    ]


def _torch_groups(params, lr, wd):
    return [
        {"params": params[:1], "lr": lr * 0.5, "weight_decay": wd * 4.0},
        {"params": params[1:], "lr": lr * 2.0, "weight_decay": 0.0},
    ]


# AMSGrad takes one step: torch's own differentiable AMSGrad cannot backpropagate through a
# second one (its max buffer is modified in place after autograd saved it).
@pytest.mark.parametrize(
    ("flags", "n_steps"),
    [({}, 2), ({"amsgrad": True}, 1), ({"maximize": True}, 2)],
    ids=["plain", "amsgrad", "maximize"],
)
def test_gradients_through_steps_match_torch_differentiable(flags, n_steps):
    """Differentiable steps on non-leaf params, then a loss: the params and the gradient that
    reaches the leaves (through the update) equal torch.optim.AdamW(differentiable=True)'s given
    the equivalent groups."""
    results = []
    for make in ("ours", "theirs"):
        leaves = _leaves()
        params = [w.clone() for w in leaves]  # non-leaf: autograd tracks the update
        if make == "ours":
            opt = fused_mup.AdamW(
                _groups(params), lr=0.1, weight_decay=0.1, differentiable=True, **flags
            )
        else:
            opt = torch.optim.AdamW(_torch_groups(params, 0.1, 0.1), differentiable=True, **flags)
        for step in range(n_steps):
            loss = sum((p * (step + 1)).sin().sum() for p in params)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        final = sum(p.square().sum() for p in params)
        final.backward()
        results.append(([p.detach() for p in params], [w.grad for w in leaves]))
    (ours_p, ours_g), (theirs_p, theirs_g) = results
    for a, b in zip(ours_p + ours_g, theirs_p + theirs_g):
        assert b is not None and b.abs().sum() > 0  # the gradient did flow
        assert_close(a, b, FP32, "differentiable step")


def test_independent_decay_matches_torch_with_the_translated_weight_decay():
    """Independent decay relative to the peak lr is torch's decay with weight_decay =
    wd_eff / (peak · lr_mult), under a schedule that lowers lr below its peak."""
    trajectories = []
    for make in ("ours", "theirs"):
        params = [w.detach().clone() for w in _leaves()]
        if make == "ours":
            opt = fused_mup.AdamW(
                _groups(params),
                lr=0.05,
                weight_decay=0.2,
                weight_decay_mode="independent",
                differentiable=True,
            )
        else:  # peak 0.05 (StepLR only lowers lr): wd_eff 0.8 / (0.05 · 0.5)
            groups = _torch_groups(params, 0.05, 0.0)
            groups[0]["weight_decay"] = 0.2 * 4.0 / (0.05 * 0.5)
            opt = torch.optim.AdamW(groups, differentiable=True)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        gen = torch.Generator().manual_seed(1)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            sched.step()
        trajectories.append([p.detach() for p in params])
        assert {st["step"].item() for st in opt.state.values()} == {6.0}
    for a, b in zip(*trajectories):
        assert_close(a, b, FP32, "independent decay")


def test_tensor_lr_gets_a_gradient_as_in_torch():
    """Meta-learning the lr: d(loss after the step)/d(lr) equals torch's."""
    grads = []
    for make in ("ours", "theirs"):
        lr = torch.tensor(0.05, requires_grad=True)
        params = [w.clone() for w in _leaves()]
        cls = fused_mup.AdamW if make == "ours" else torch.optim.AdamW
        opt = cls(params, lr=lr, weight_decay=0.0, differentiable=True)
        for p in params:
            p.grad = torch.ones_like(p) * 0.3
        opt.step()
        sum(p.sum() for p in params).backward()
        grads.append(lr.grad)
    assert grads[0] is not None
    assert_close(grads[0], grads[1], FP32, "d loss / d lr")


def test_what_differentiable_does_not_take_is_refused_by_name():
    p = torch.randn(4, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.randn(4, dtype=torch.bfloat16)
    opt = fused_mup.AdamW([p.detach()], differentiable=True, bf16_update="kahan")
    opt.param_groups[0]["params"][0].grad = p.grad
    with pytest.raises(NotImplementedError, match=r"bf16_update='kahan'.*param group 0"):
        opt.step()
    q = torch.randn(4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="torch.nn.utils.clip_grad_norm_"):
        fused_mup.AdamW([q], differentiable=True).clip_grad_norm_(1.0)
    with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
        fused_mup.AdamW([q], differentiable=True, fused=True)


def test_sparse_grads_are_refused_before_anything_changes():
    p = torch.randn(4, 3)
    before = p.clone()
    opt = fused_mup.AdamW([p], differentiable=True)
    p.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert torch.equal(p, before) and len(opt.state[p]) == 0


def test_capturable_reaches_torchs_checks():
    """capturable=True goes to torch's AdamW, which refuses CPU steps for it, as torch.optim.AdamW
    (differentiable=True, capturable=True) does on the CPU."""
    for cls in (torch.optim.AdamW, fused_mup.AdamW):
        p = torch.randn(3)
        p.grad = torch.randn(3)
        with pytest.raises(AssertionError, match="capturable=True"):
            cls([p], differentiable=True, capturable=True).step()
