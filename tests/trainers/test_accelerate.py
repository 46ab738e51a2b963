"""accelerate: prepare + accelerator.clip_grad_norm_ train as with torch.optim.AdamW (CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fused_mup

accelerate = pytest.importorskip("accelerate")
from accelerate.state import AcceleratorState  # noqa: E402


def train(opt_factory, mixed_precision: str, fused_clip: bool = False) -> nn.Module:
    """docs/trainers.md's accelerate example, 5 steps."""
    accelerate.utils.set_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    opt = opt_factory(model)
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=mixed_precision)
    model, opt = accelerator.prepare(model, opt)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)
        with accelerator.autocast():
            loss = nn.functional.mse_loss(model(x).float(), y)
        accelerator.backward(loss)
        if fused_clip:
            opt.optimizer.clip_grad_norm_(0.5)  # the wrapper does not forward this method
        else:
            accelerator.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
    return accelerator.unwrap_model(model)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("fused_clip", [False, True], ids=["accelerator-clip", "fused-clip"])
def test_accelerate_matches_torch(mixed_precision: str, fused_clip: bool) -> None:
    ours = train(
        lambda m: fused_mup.create_optimizer(m, "sp", lr=1e-2, weight_decay=0.1),
        mixed_precision,
        fused_clip,
    )
    ref = train(
        lambda m: torch.optim.AdamW(
            fused_mup.param_groups(m, "sp", lr=1e-2, weight_decay=0.1, bake=True)
        ),
        mixed_precision,
    )
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
