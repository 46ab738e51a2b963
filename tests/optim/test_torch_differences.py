"""The items of docs/differences.md that no other test file already pins down, each checked
against what torch.optim.AdamW does in the same situation."""

from __future__ import annotations

import pytest
import torch
from devices import INTERPRETING

import fused_mup
from fused_mup.launcher import KernelConfig


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_meta_params_step_quietly_as_torch_default_does(backend):
    """Deliberate: a model built on the meta device (before to_empty) steps as a no-op, as torch's
    default AdamW does, on every backend; torch's fused=True raises instead."""

    def meta_model():
        with torch.device("meta"):
            model = torch.nn.Linear(2, 3)
        for p in model.parameters():
            p.grad = torch.rand_like(p)
        return model

    model = meta_model()
    opt = fused_mup.AdamW(model.parameters(), backend=backend)
    opt.step()
    # Asked for fused=True, torch's fused error (torch's test_fused_error_on_params_on_meta).
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params"):
        fused_mup.AdamW(meta_model().parameters(), backend=backend, fused=True).step()
    assert opt.state[model.weight]["exp_avg"].is_meta
    theirs = meta_model()
    torch.optim.AdamW(theirs.parameters()).step()  # torch's default: also quiet
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params"):
        torch.optim.AdamW(meta_model().parameters(), fused=True).step()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fused_clip_with_grad_scaler_leaves_grads_scaled(backend):
    """opt.clip_grad_norm_(..., grad_scaler=scaler) + scaler.step(opt): p.grad keeps the scaled
    values (unscaling happens in registers); torch's fused AdamW writes them back unscaled."""
    if backend == "triton" and not INTERPRETING:
        pytest.skip("CPU kernel needs TRITON_INTERPRET=1")
    p = torch.ones(8, requires_grad=True)
    opt = fused_mup.AdamW([p], backend=backend, kernel_config=KernelConfig(16, 16))
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(p.sum()).backward()
    scaled = p.grad.clone()
    opt.clip_grad_norm_(100.0, grad_scaler=scaler)
    scaler.step(opt)
    assert torch.equal(p.grad, scaled) and scaled[0] == 4.0
    assert opt.state[p]["step"].item() == 1

    q = torch.ones(8, requires_grad=True)
    q.grad = scaled.clone()
    ref = torch.optim.AdamW([q], fused=True)
    ref.grad_scale, ref.found_inf = torch.tensor(4.0), torch.tensor(0.0)
    ref.step()
    assert torch.equal(q.grad, torch.ones(8)), "torch's fused AdamW writes unscaled grads back"


def test_fused_clip_leaves_grads_unclipped():
    p = torch.ones(8, requires_grad=True)
    opt = fused_mup.AdamW([p], backend="reference")
    p.grad = torch.full((8,), 10.0)
    opt.clip_grad_norm_(1.0)
    opt.step()
    assert torch.equal(p.grad, torch.full((8,), 10.0))


@pytest.mark.skipif(not INTERPRETING, reason="CPU kernel needs TRITON_INTERPRET=1")
def test_non_dense_params_go_through_a_staging_copy():
    """The kernel walks memory in order: a non-dense param is updated in a dense copy that the
    step copies in and out (the cost docs/differences.md states); its states take the copy's
    layout."""
    base = torch.randn(6, 8)
    p = torch.nn.Parameter(base[:, ::2])
    opt = fused_mup.AdamW([p], backend="triton", kernel_config=KernelConfig(16, 16))
    p.grad = torch.randn(6, 4)
    opt.step()
    staged = opt._planner.plan.staged
    assert len(staged) == 1 and staged[0][0].data_ptr() == p.data_ptr()
    assert staged[0][1].is_contiguous() and opt.state[p]["exp_avg"].is_contiguous()


def test_extra_group_keys_are_saved_with_the_groups():
    p = torch.zeros(2, requires_grad=True)
    saved = fused_mup.AdamW([p]).state_dict()["param_groups"][0]
    extra = {"lr_mult", "wd_mult", "weight_decay_mode", "bf16_update", "peak_lr"}
    torch_keys = torch.optim.AdamW([p]).state_dict()["param_groups"][0].keys()
    assert set(saved) - set(torch_keys) == extra


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a device tensor lr needs CUDA")
def test_device_tensor_lr_needs_capturable():
    """torch reads a CUDA tensor lr on the host each step (a sync); we refuse it unless
    capturable=True, which computes the group table from it on the device."""
    p = torch.zeros(3, device="cuda", requires_grad=True)
    opt = fused_mup.AdamW([p], lr=torch.tensor(1e-3, device="cuda"))
    p.grad = torch.ones_like(p)
    with pytest.raises(NotImplementedError, match="capturable=True"):
        opt.step()
