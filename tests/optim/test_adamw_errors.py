"""Bad input: torch's messages where torch has one, the offending group or param named, and
nothing lost (params and states unchanged after the error)."""

from __future__ import annotations

import pytest
import torch
from devices import kernel_devices

import fused_mup
from fused_mup import launcher

BAD_ARGS = {
    "negative-lr": dict(lr=-1e-3),
    "negative-eps": dict(eps=-1.0),
    "beta0-one": dict(betas=(1.0, 0.999)),
    "beta1-negative": dict(betas=(0.9, -0.1)),
    "negative-weight-decay": dict(weight_decay=-0.1),
}


@pytest.mark.parametrize("kwargs", list(BAD_ARGS.values()), ids=list(BAD_ARGS))
def test_constructor_errors_match_torch(kwargs):
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError) as theirs:
        torch.optim.AdamW(p, **kwargs)
    with pytest.raises(ValueError) as ours:
        fused_mup.AdamW(p, **kwargs)
    assert str(ours.value) == str(theirs.value)


# Invalid params (a bare tensor, a generator that yields nothing) beside a bad argument: torch
# checks the arguments first, so its ValueError wins over the params' TypeError / ValueError.
BAD_PARAMS = {
    "bare-tensor": lambda: torch.zeros(3, requires_grad=True),
    "empty": lambda: iter(()),
}


@pytest.mark.parametrize("bad_params", list(BAD_PARAMS.values()), ids=list(BAD_PARAMS))
@pytest.mark.parametrize(
    "kwargs",
    [*BAD_ARGS.values(), dict(betas=(0.9, torch.tensor(0.999)))],
    ids=[*BAD_ARGS, "mixed-float-tensor-betas"],
)
def test_arguments_are_checked_before_params_as_torch(kwargs, bad_params):
    with pytest.raises(Exception) as theirs:
        torch.optim.AdamW(bad_params(), **kwargs)
    with pytest.raises(Exception) as ours:
        fused_mup.AdamW(bad_params(), **kwargs)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
    assert type(theirs.value) is ValueError  # the argument's error, not the params'


def test_defaults_match_torch():
    p = [torch.zeros(3, requires_grad=True)]
    theirs = torch.optim.AdamW(p).defaults
    ours = fused_mup.AdamW(p).defaults
    assert {k: ours[k] for k in theirs} == theirs
    assert (ours["lr_mult"], ours["wd_mult"], ours["weight_decay_mode"]) == (1.0, 1.0, "coupled")


def test_bad_group_hyperparameters_name_the_group():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"Invalid learning rate: -1\.0 in param group 1"):
        fused_mup.AdamW([{"params": [p]}, {"params": [q], "lr": -1.0}])
    opt = fused_mup.AdamW([p])
    with pytest.raises(ValueError, match=r"Invalid lr_mult value: -2 in param group 1"):
        opt.add_param_group({"params": [q], "lr_mult": -2})
    with pytest.raises(ValueError, match=r"weight_decay_mode: 'sometimes' in param group 1"):
        opt.add_param_group({"params": [q], "weight_decay_mode": "sometimes"})
    assert len(opt.param_groups) == 1, "a refused group must not be added"


# A number given as a string (YAML reads `lr: 1e-3` as one) or None: torch's own check fails
# with "'<=' not supported between instances of 'float' and 'str'"; ours names the key and the
# group in torch's words.
BAD_TYPES = {
    "lr_mult-string": ({"lr_mult": "2"}, "Invalid lr_mult value: '2' in param group 1"),
    "wd_mult-none": ({"wd_mult": None}, "Invalid wd_mult value: None in param group 1"),
    "lr-string": ({"lr": "1e-3"}, "Invalid learning rate: '1e-3' in param group 1"),
    "eps-string": ({"eps": "1e-8"}, "Invalid epsilon value: '1e-8' in param group 1"),
    "beta-string": ({"betas": (0.9, "0.95")}, "Invalid beta parameter at index 1: '0.95' in "),
    "betas-string": ({"betas": "0.9,0.95"}, "Invalid betas: '0.9,0.95' in param group 1"),
    "weight_decay-string": ({"weight_decay": "0.1"}, "Invalid weight_decay value: '0.1' in "),
    "peak_lr-string": ({"peak_lr": "1e-3"}, "Invalid peak_lr value: '1e-3' in param group 1"),
}


@pytest.mark.parametrize("case", list(BAD_TYPES.values()), ids=list(BAD_TYPES))
def test_group_values_of_the_wrong_type_name_the_group_and_key(case):
    group, message = case
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = fused_mup.AdamW([p])
    with pytest.raises(TypeError) as err:
        opt.add_param_group({"params": [q], **group})
    assert str(err.value).startswith(message)
    assert "expected" in str(err.value)
    assert len(opt.param_groups) == 1, "a refused group must not be added"
    with pytest.raises(TypeError, match="in param group 1"):
        fused_mup.AdamW([{"params": [p]}, {"params": [q], **group}])


def test_constructor_value_of_the_wrong_type_names_the_argument():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(TypeError) as theirs:
        torch.optim.AdamW(p, lr="1e-3")
    assert "not supported between instances" in str(theirs.value)  # what torch says
    with pytest.raises(TypeError) as ours:
        fused_mup.AdamW(p, lr="1e-3")
    assert str(ours.value) == "Invalid learning rate: '1e-3'; expected a number, got str"


def test_unknown_options_are_refused():
    p = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match="Invalid backend: 'cuda'"):
        fused_mup.AdamW(p, backend="cuda")
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        fused_mup.AdamW(p, state_dtype=torch.int8)
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together."):
        fused_mup.AdamW(p, fused=True, foreach=True)


def _named_opt(device, backend="triton", **kw):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(device)
    opt = fused_mup.AdamW(model.named_parameters(), lr=1e-2, backend=backend, **kw)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def _snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {
        id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()
    }


def _assert_unchanged(model, opt, snap):
    params, states = snap
    for p, old in zip(model.parameters(), params):
        assert torch.equal(p, old), "a failed step changed a param"
        for k, v in opt.state[p].items():
            assert torch.equal(v, states[id(p)][k]), f"a failed step changed state {k}"


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("device", kernel_devices())
def test_sparse_grad_gives_torchs_error_and_names_the_param(device, backend):
    model, opt = _named_opt(device, backend)
    snap = _snapshot(model, opt)
    model[1].weight.grad = model[1].weight.grad.to_sparse()
    with pytest.raises(RuntimeError) as err:
        opt.step()
    assert "AdamW does not support sparse gradients, please consider SparseAdam instead" in str(
        err.value
    )
    assert "'1.weight'" in str(err.value)
    _assert_unchanged(model, opt, snap)


@pytest.mark.parametrize("device", kernel_devices())
def test_state_that_no_longer_fits_is_refused_by_name(device):
    model, opt = _named_opt(device)
    snap = _snapshot(model, opt)
    model[0].bias.data = torch.zeros(5, device=device)  # a different shape than its state
    model[0].bias.grad = torch.zeros(5, device=device)
    with pytest.raises(RuntimeError, match=r"'exp_avg' of parameter '0\.bias'.*shape \(3,\)"):
        opt.step()
    model[0].bias.data = snap[0][1].clone()
    model[0].bias.grad = torch.randn(3, device=device)
    params_before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # the optimizer still works once the param fits again
    assert not torch.equal(model[0].bias, params_before[1])


def test_triton_backend_refuses_float64_by_name():
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = fused_mup.AdamW([p], backend="triton")
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match=r"parameter 0 of param group 0 .*float64"):
        opt.step()
    assert len(opt.state[p]) == 0
    auto = fused_mup.AdamW([p])  # auto takes the reference path for float64
    auto.step()
    assert auto.state[p]["step"].item() == 1


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setattr(launcher, "_interpreting", lambda: False)
    p = torch.zeros(3, requires_grad=True)
    opt = fused_mup.AdamW([p], backend="triton")
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        opt.step()
    assert torch.equal(p, torch.zeros(3))


def test_device_tensor_lr_is_refused_until_capturable():
    p = torch.zeros(3, requires_grad=True)
    opt = fused_mup.AdamW([p], lr=torch.tensor(1e-3))  # a CPU tensor lr is fine
    p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        fused_mup.AdamW([p], lr=torch.tensor([1e-3, 1e-3]))
