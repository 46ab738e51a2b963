"""Preset glue for ``fused-mup transfer``: model-side changes, parameter groups, optimizer.

Everything comes from the package: ``fused_mup.param_groups``, its μP model helpers and
``fused_mup.AdamW``. (Run keys keep an ``impl`` field, always "fused_mup", so that results
files written by earlier versions still resume.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fused_mup.transfer_model import RunConfig, TinyGPT

__all__ = ["PRESETS", "available_impl", "build", "make_optimizer"]

PRESETS = ("sp", "mup", "mup_lr", "sp_emb", "sp_emb_sqrt")


def available_impl() -> str:
    """The optimizer implementation the sweep uses (kept for run-key compatibility)."""
    return "fused_mup"


# The names are unambiguous, so say them rather than rely on param_groups' module-type rules.
OVERRIDES = {
    "readout.weight": "readout",
    "blocks.*.qkv.weight": "hidden",
    "blocks.*.proj.weight": "hidden",
    "blocks.*.fc.weight": "hidden",
    "blocks.*.fc_out.weight": "hidden",
}


def _attn_scale(cfg: RunConfig) -> float | None:
    if cfg.preset != "mup":
        return None  # SP: 1/sqrt(d_head)
    from fused_mup.presets import attention_scale

    return attention_scale(cfg.width // cfg.heads, cfg.base_width // cfg.heads)


@torch.no_grad()
def _init(groups: list[dict[str, Any]], cfg: RunConfig) -> None:
    # sigma0 = 1/sqrt(base width). Embeddings N(0, sigma0^2); hidden N(0, sigma0^2/m), i.e.
    # variance 1/d; LayerNorm (1, 0). Readout: SP N(0, 1/d); muP N(0, sigma0^2) with the logits
    # x 1/m. So every preset is the same model at the base width.
    from fused_mup.presets import mup_init_

    sigma0 = cfg.base_width**-0.5
    m = cfg.width / cfg.base_width
    mup_init_(groups, std=sigma0)
    if cfg.preset != "mup":
        # Rescale rather than redraw: same random stream, so all presets are bit-identical
        # at the base width.
        for g in groups:
            if g["role"] == "readout":
                for p in g["params"]:
                    p.mul_(1.0 / math.sqrt(m))


def build(cfg: RunConfig) -> tuple[TinyGPT, list[dict[str, Any]]]:
    """Model (with the preset's model-side changes and init) and its parameter groups."""
    from fused_mup.transfer_model import TinyGPT

    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose from {PRESETS}")
    m = cfg.width / cfg.base_width
    model = TinyGPT(cfg.width, cfg.depth, cfg.heads, cfg.context, attn_scale=_attn_scale(cfg))
    from fused_mup.presets import param_groups, scale_readout_

    groups = param_groups(
        model,
        cfg.preset,
        width_mult=m,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        weight_decay_mode=cfg.weight_decay_mode,
        overrides=OVERRIDES,
    )
    if cfg.preset == "mup":
        scale_readout_(model.readout, 1.0 / m)
    _init(groups, cfg)
    return model, groups


def make_optimizer(cfg: RunConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``fused_mup.AdamW`` on the preset's groups."""
    from fused_mup import AdamW

    for g in groups:
        g["initial_lr"] = g["lr"]  # what a torch scheduler records; independent decay reads it
    return AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
