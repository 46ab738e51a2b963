"""AdamW's entry in torch's own OptimizerInfo database, run against fused_mup.AdamW.

``torch.testing._internal.common_optimizers.optim_db`` ships in the torch wheel. Its AdamW entry
gives the inputs torch tests its own AdamW with (``optim_inputs_func``) and the inputs it must
refuse (``optim_error_inputs_func``). Each input runs on the reference path and on the kernel (in
Triton's interpreter on CPU), as a 7-step trajectory against torch.optim.AdamW given the same
kwargs, with the params passed as tensors, as (name, tensor) pairs, as two param groups and as
non-contiguous views.
"""

from __future__ import annotations

import copy
import io
import re
import warnings

import pytest
import torch
from devices import DEVICES, INTERPRETING
from tolerances import assert_close
from torch.nn import Parameter
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import fused_mup
from fused_mup.launcher import KernelConfig

Tensor = torch.Tensor

ADAMW = next(info for info in optim_db if info.optim_cls is torch.optim.AdamW)
STEPS = 7
# Small tiles, so that the (7, 5) param spans two programs in the interpreter.
TILES = KernelConfig(block=16, chunk_size=32)


def _backend_params():
    return [
        pytest.param("reference", id="reference"),
        pytest.param(
            "triton",
            id="kernel",
            marks=pytest.mark.skipif(
                not INTERPRETING and not torch.cuda.is_available(),
                reason="the kernel needs CUDA or TRITON_INTERPRET=1",
            ),
        ),
    ]


def _inputs():
    out = []
    for device in DEVICES:
        for optim_input in ADAMW.optim_inputs_func(device=device):
            out.append(pytest.param(device, optim_input, id=f"{device}-{optim_input.desc}"))
    return out


def _make_params(device: str, layout: str, seed: int) -> list[Tensor]:
    torch.manual_seed(seed)
    if layout == "noncontiguous":  # as torch's test_forloop_goes_right_direction
        raw = [torch.randn(7, 5, 2), torch.randn(7, 2), torch.randn(3, 4).t()]
        tensors = [raw[0][..., 0], raw[1][..., 0], raw[2]]
    else:
        tensors = [torch.randn(7, 5), torch.randn(7), torch.randn(3, 1, 2)]
    return [Parameter(t.to(device)) for t in tensors]


def _arrange(params: list[Tensor], layout: str, kwargs: dict) -> list:
    """The params argument for one layout; groups override lr / weight_decay as torch's
    test_param_groups_lr and test_param_groups_weight_decay do."""
    if layout == "named":
        return [(f"p{i}", p) for i, p in enumerate(params)]
    if layout == "groups":
        lr = kwargs.get("lr", 1e-3)
        return [
            {"params": params[:1]},
            {"params": params[1:], "lr": lr * 3, "weight_decay": 0.0},
        ]
    return list(params)


@pytest.mark.parametrize("layout", ["tensors", "named", "groups", "noncontiguous"])
@pytest.mark.parametrize("backend", _backend_params())
@pytest.mark.parametrize(("device", "optim_input"), _inputs())
def test_trajectory_matches_torch(device, optim_input, backend, layout):
    ours_p, theirs_p = _make_params(device, layout, 0), _make_params(device, layout, 0)
    kwargs = optim_input.kwargs
    opt = fused_mup.AdamW(
        _arrange(ours_p, layout, kwargs),
        **copy.deepcopy(kwargs),
        backend=backend,
        kernel_config=TILES,
    )
    ref = torch.optim.AdamW(_arrange(theirs_p, layout, kwargs), **copy.deepcopy(kwargs))
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
            # torch's _compare_between: a step where one param has no grad is skipped for it.
            a.grad = None if (step == 3 and i == 0) else torch.randn(a.shape, generator=gen)
            a.grad = None if a.grad is None else a.grad.to(device)
            b.grad = None if a.grad is None else a.grad.clone()
        if step == 4:
            # Resume from a weights_only checkpoint of our own state, mid-run.
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            opt = fused_mup.AdamW(
                _arrange(ours_p, layout, kwargs),
                **copy.deepcopy(kwargs),
                backend=backend,
                kernel_config=TILES,
            )
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(ours_p, theirs_p)):
            assert_close(a, b, torch.float32, f"step {step}, param {i} ({optim_input.desc})")
    for a, b in zip(ours_p, theirs_p):
        assert opt.state[a].keys() >= ref.state[b].keys()
        for key, theirs in ref.state[b].items():
            ours = opt.state[a][key]
            if key == "step":
                assert ours.item() == theirs.item() == STEPS - (a is ours_p[0])
            else:
                assert ours.stride() == a.stride() or not a.is_contiguous()
                assert_close(ours, theirs, torch.float32, f"state {key!r} ({optim_input.desc})")


def _error_inputs():
    out = []
    for device in DEVICES:
        for error_input in ADAMW.optim_error_inputs_func(device=device, dtype=torch.float32):
            desc = error_input.optimizer_error_input.desc
            out.append(pytest.param(error_input, id=f"{device}-{desc}"))
    return out


# torch error cases that do not apply to fused_mup.AdamW, with what it does instead and why
# (none today: every error input of AdamW's entry raises torch's type and message).
NOT_APPLICABLE: dict[str, tuple[type[Exception], str]] = {}


@pytest.mark.parametrize("error_input", _error_inputs())
def test_error_matches_torch(error_input):
    optim_input = error_input.optimizer_error_input
    params = optim_input.params
    if params is None:
        params = [Parameter(torch.randn(2, 3))]
    error_type, regex = NOT_APPLICABLE.get(
        optim_input.desc, (error_input.error_type, error_input.error_regex)
    )

    def act():
        opt = fused_mup.AdamW(params, **optim_input.kwargs)
        if error_input.error_on == OptimizerErrorEnum.STEP_ERROR:
            opt.step()

    if error_input.error_on not in (
        OptimizerErrorEnum.CONSTRUCTION_ERROR,
        OptimizerErrorEnum.STEP_ERROR,
    ):
        raise NotImplementedError(error_input.error_on)
    if issubclass(error_type, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            act()
        messages = [str(w.message) for w in caught if issubclass(w.category, error_type)]
        assert any(re.search(regex, m) for m in messages), (regex, messages)
    else:
        with pytest.raises(error_type, match=regex):
            act()
