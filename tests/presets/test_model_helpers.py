"""Model-side helpers for full μP: mup_init_, scale_readout_, OutputScale, attention_scale."""

from __future__ import annotations

import math

import pytest
import torch
from preset_models import mlp
from torch import nn

import fused_mup
from fused_mup.presets import OutputScale, attention_scale, mup_init_, param_groups, scale_readout_


def test_mup_init_scales_hidden_std() -> None:
    torch.manual_seed(0)
    model = mlp(1024)
    mup_init_(param_groups(model, "mup", base_model=mlp(64)), std=0.5)
    assert model[2].weight.std().item() == pytest.approx(0.5 / 4, rel=0.02)
    assert model[0].weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert model[4].weight.std().item() == pytest.approx(0.5, rel=0.1)
    assert torch.all(model[0].bias == 0)
    mup_init_(param_groups(model, "mup", base_model=mlp(64)), zero_readout=True)
    assert torch.all(model[4].weight == 0)


def test_readout_scale_and_attention_scale() -> None:
    head = nn.Linear(8, 3)
    x = torch.randn(2, 8)
    ref = head(x / 4)
    handle = scale_readout_(head, 0.25)
    torch.testing.assert_close(head(x), ref)
    assert list(head.state_dict()) == ["weight", "bias"]
    handle.remove()
    torch.testing.assert_close(nn.Sequential(OutputScale(0.25), head)(x), ref)
    assert attention_scale(64) == 1 / 64
    assert attention_scale(16, base_d_head=16) == pytest.approx(1 / math.sqrt(16))


def test_public_exports() -> None:
    for name in ("param_groups", "param_roles", "mup_init_", "scale_readout_", "attention_scale"):
        assert hasattr(fused_mup, name)
