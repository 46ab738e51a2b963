"""Other optimizers given fused_mup's group keys warn instead of silently ignoring them."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fused_mup
from fused_mup.ignored_keys import IGNORED_KEYS_ATTR


def _model() -> nn.Module:
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 50))


def _step(opt: torch.optim.Optimizer, model: nn.Module) -> list[warnings.WarningMessage]:
    model(torch.randint(0, 50, (4,))).square().mean().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
    return [w for w in caught if "fused_mup's" in str(w.message)]


def test_fused_checkpoint_loaded_into_torch_warns_once_per_load():
    model = _model()
    groups = [
        {"params": [model[0].weight], "lr_mult": 4.0},
        {"params": [p for p in model.parameters() if p is not model[0].weight]},
    ]
    fused = fused_mup.AdamW(groups, lr=1e-2)
    assert _step(fused, model) == []  # fused_mup applies its own keys
    sd = fused.state_dict()

    torch_opt = torch.optim.AdamW(
        [{"params": [model[0].weight]}, {"params": groups[1]["params"]}], lr=1e-2
    )
    assert _step(torch_opt, model) == []  # no fused keys yet
    torch_opt.load_state_dict(sd)
    (w,) = _step(torch_opt, model)
    assert "AdamW: param group 0 carries fused_mup's lr_mult=4" in str(w.message)
    assert "fused_mup.to_torch_state_dict" in str(w.message)
    assert _step(torch_opt, model) == []  # once, not every step
    torch_opt.load_state_dict(sd)  # new groups: checked again
    assert len(_step(torch_opt, model)) == 1


def test_to_torch_state_dict_loads_without_a_warning():
    model = _model()
    fused = fused_mup.AdamW(
        [
            {"params": [model[0].weight], "lr_mult": 4.0, "wd_mult": 2.0},
            {"params": [p for p in model.parameters() if p is not model[0].weight]},
        ],
        lr=1e-2,
        weight_decay_mode="independent",
    )
    _step(fused, model)
    torch_opt = torch.optim.AdamW(
        [{"params": [model[0].weight]}, {"params": list(model.parameters())[1:]}]
    )
    torch_opt.load_state_dict(fused_mup.to_torch_state_dict(fused.state_dict()))
    assert _step(torch_opt, model) == []


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda g: torch.optim.AdamW(g, lr=1e-3), "lr_mult="),
        (lambda g: torch.optim.SGD(g, lr=1e-3, weight_decay=0.1), "wd_mult="),
    ],
    ids=["AdamW", "SGD"],
)
def test_unbaked_preset_groups_in_a_torch_optimizer_warn(make, expected):
    model = _model()
    opt = make(fused_mup.param_groups(model, "mup", width_mult=4.0, weight_decay=0.1))
    (w,) = _step(opt, model)
    assert expected in str(w.message) and "bake=True" in str(w.message)


def test_baked_groups_and_neutral_keys_do_not_warn():
    model = _model()
    baked = fused_mup.param_groups(
        model, "mup", width_mult=4.0, lr=1e-3, weight_decay=0.1, bake=True
    )
    assert _step(torch.optim.AdamW(baked), model) == []
    # Multipliers of 1, or wd_mult / independent mode without decay, change nothing in torch.
    neutral = [
        {"params": list(model.parameters()), "lr_mult": 1.0, "wd_mult": 3.0, "weight_decay": 0.0,
         "weight_decay_mode": "independent"}
    ]  # fmt: skip
    assert _step(torch.optim.AdamW(neutral), model) == []


def test_fused_adamw_declares_it_applies_the_keys():
    assert getattr(fused_mup.AdamW, IGNORED_KEYS_ATTR) is True
    assert not getattr(torch.optim.AdamW, IGNORED_KEYS_ATTR, False)


def test_a_group_added_after_the_first_step_is_checked():
    model = _model()
    opt = torch.optim.AdamW([model[0].weight], lr=1e-3)
    assert _step(opt, model) == []
    opt.add_param_group({"params": list(model.parameters())[1:], "lr_mult": 8.0})
    (w,) = _step(opt, model)
    assert "param group 1 carries fused_mup's lr_mult=8.0" in str(w.message)


def test_wrappers_around_fused_adamw_do_not_warn():
    """ZeroRedundancyOptimizer (``.optim``), Lookahead-style (``.base_optimizer``) wrappers share
    the groups with the fused_mup.AdamW they step, which applies the keys."""

    class Wrapper(torch.optim.Optimizer):
        def __init__(self, inner, attr):
            super().__init__(inner.param_groups, {})
            self.param_groups = inner.param_groups  # shared, as ZeRO and Lookahead share them
            setattr(self, attr, inner)

        def step(self, closure=None):
            (self.optim if hasattr(self, "optim") else self.base_optimizer).step()

    for attr in ("optim", "base_optimizer"):
        model = _model()
        inner = fused_mup.AdamW([{"params": list(model.parameters()), "lr_mult": 0.25}])
        assert _step(Wrapper(inner, attr), model) == []
        plain = torch.optim.SGD([{"params": list(model.parameters()), "lr_mult": 0.25}], lr=0.1)
        assert _step(Wrapper(plain, attr), model)  # the wrapped SGD ignores it: warned


def test_the_hook_never_breaks_another_optimizers_step():
    class Unhashable(torch.optim.SGD):
        __hash__ = None  # e.g. a subclass that defines __eq__

    model = _model()
    _step(Unhashable(model.parameters(), lr=0.1), model)
    odd = torch.optim.SGD([{"params": list(model.parameters()), "lr_mult": None}], lr=0.1)
    (w,) = _step(odd, model)
    assert "lr_mult=None" in str(w.message)
