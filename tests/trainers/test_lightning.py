"""Lightning: mixed precision + gradient_clip_val, as with torch.optim.AdamW (CPU, tiny model)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fused_mup

L = pytest.importorskip("lightning")
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402


class Tiny(L.LightningModule):
    def __init__(self, opt_cls: type, clip_with_fused: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        self.opt_cls = opt_cls
        self.clip_with_fused = clip_with_fused
        self.norms: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x).float(), y)

    def configure_optimizers(self):
        return self.opt_cls(self.parameters(), lr=1e-2, weight_decay=0.1)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, **kwargs):
        if not self.clip_with_fused:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, **kwargs)
        # docs/trainers.md's opt-in: one launch for the norm, the coefficient applied in the step.
        self.norms.append(float(optimizer.clip_grad_norm_(gradient_clip_val)))


def data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(module: L.LightningModule, precision: str) -> L.LightningModule:
    # Lightning turns "16-mixed" into bf16 on the CPU; the plugin keeps fp16 and its GradScaler.
    fp16 = {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}
    trainer = L.Trainer(
        accelerator="cpu",
        **(fp16 if precision == "16-mixed" else {"precision": precision}),
        gradient_clip_val=0.5,
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data())
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")  # fp16 runs through a GradScaler
    return module


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32-true"])
def test_mixed_precision_with_gradient_clipping_matches_torch(precision: str) -> None:
    """docs/trainers.md's Lightning example: `precision=...` + `gradient_clip_val` train exactly
    as with torch.optim.AdamW. (16-mixed on CPU: Lightning uses a GradScaler there too.)"""
    ours = fit(Tiny(fused_mup.AdamW), precision)
    ref = fit(Tiny(torch.optim.AdamW), precision)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours.net[0].weight, Tiny(torch.optim.AdamW).net[0].weight)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fused_clip_in_configure_gradient_clipping(precision: str) -> None:
    ours = fit(Tiny(fused_mup.AdamW, clip_with_fused=True), precision)
    ref = fit(Tiny(torch.optim.AdamW), precision)
    assert len(ours.norms) == 6 and all(n > 0.5 for n in ours.norms)  # the clip was active
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
