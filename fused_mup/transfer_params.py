"""Preset glue for ``fused-mup transfer``: model-side changes, parameter groups, optimizer.

With ``impl="fused_mup"`` everything comes from the package (``fused_mup.param_groups`` and
``fused_mup.AdamW``). ``impl="standin"`` is a self-contained re-statement of the same presets
on ``torch.optim.AdamW``; it exists so the sweep runs before / without the package pieces,
and the ``impl`` value is part of every run key so the two are never mixed in one table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fused_mup.transfer_model import RunConfig, TinyGPT

__all__ = ["PRESETS", "available_impl", "build", "make_optimizer", "role_of"]

PRESETS = ("sp", "mup", "mup_lr", "sp_emb", "sp_emb_sqrt")


def available_impl() -> str:
    """``"fused_mup"`` if the real optimizer and presets are importable, else ``"standin"``."""
    try:
        from fused_mup import optim, presets

        real_opt = isinstance(optim.AdamW, type) and issubclass(optim.AdamW, torch.optim.Optimizer)
        real_presets = all(
            hasattr(presets, n) for n in ("mup_init_", "scale_readout_", "attention_scale")
        )
        return "fused_mup" if real_opt and real_presets else "standin"
    except Exception:  # noqa: BLE001 - a half-written module means: not available
        return "standin"


def role_of(name: str, p: torch.Tensor) -> str:
    """Role of a :class:`TinyGPT` parameter: embedding / hidden / readout / vector."""
    if p.ndim < 2:
        return "vector"
    if "emb" in name:
        return "embedding"
    if name.startswith("readout"):
        return "readout"
    return "hidden"


# param_groups' module-type heuristic can call a d->d Linear the readout when d equals an
# embedding's num_embeddings (e.g. d == context); the names are unambiguous, so say them.
OVERRIDES = {
    "readout.weight": "readout",
    "blocks.*.qkv.weight": "hidden",
    "blocks.*.proj.weight": "hidden",
    "blocks.*.fc.weight": "hidden",
    "blocks.*.fc_out.weight": "hidden",
}

#: Stand-in copy of fused_mup.presets.PRESETS: lr_mult = m ** e[role].
STANDIN_EXPONENTS: dict[str, dict[str, float]] = {
    "sp": {"embedding": 0.0, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
    "mup": {"embedding": 0.0, "hidden": -1.0, "readout": 0.0, "vector": 0.0},
    "mup_lr": {"embedding": 0.0, "hidden": -1.0, "readout": -1.0, "vector": 0.0},
    "sp_emb": {"embedding": 1.0, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
    "sp_emb_sqrt": {"embedding": 0.5, "hidden": 0.0, "readout": 0.0, "vector": 0.0},
}
STANDIN_DECAY = {"embedding": 1.0, "hidden": 1.0, "readout": 1.0, "vector": 0.0}


def _attn_scale(cfg: RunConfig) -> float | None:
    if cfg.preset != "mup":
        return None  # SP: 1/sqrt(d_head)
    d_head, d_head0 = cfg.width // cfg.heads, cfg.base_width // cfg.heads
    if cfg.impl == "fused_mup":
        from fused_mup.presets import attention_scale

        return attention_scale(d_head, d_head0)
    return math.sqrt(d_head0) / d_head  # 1/d_head, equal to SP at the base width


def _standin_groups(model: TinyGPT, cfg: RunConfig) -> list[dict[str, Any]]:
    m = cfg.width / cfg.base_width
    exps = STANDIN_EXPONENTS[cfg.preset]
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        role = role_of(name, p)
        if role not in groups:
            e = exps[role]
            width_wd = m**-e if cfg.weight_decay_mode == "coupled" else 1.0
            groups[role] = {
                "params": [],
                "param_names": [],
                "lr": cfg.lr,
                "weight_decay": cfg.weight_decay,
                "lr_mult": m**e,
                "wd_mult": STANDIN_DECAY[role] * width_wd,
                "weight_decay_mode": cfg.weight_decay_mode,
                "role": role,
                "width_mult": m,
            }
        groups[role]["params"].append(p)
        groups[role]["param_names"].append(name)
    return list(groups.values())


@torch.no_grad()
def _init(groups: list[dict[str, Any]], cfg: RunConfig) -> None:
    # sigma0 = 1/sqrt(base width). Embeddings N(0, sigma0^2); hidden N(0, sigma0^2/m), i.e.
    # variance 1/d; LayerNorm (1, 0). Readout: SP N(0, 1/d); muP N(0, sigma0^2) with the logits
    # x 1/m. So every preset is the same model at the base width.
    sigma0 = cfg.base_width**-0.5
    m = cfg.width / cfg.base_width
    if cfg.impl == "fused_mup":
        from fused_mup.presets import mup_init_

        mup_init_(groups, std=sigma0)
    else:
        for g in groups:
            for p in g["params"]:
                if g["role"] in ("embedding", "readout"):
                    p.normal_(0.0, sigma0)
                elif g["role"] == "hidden":
                    p.normal_(0.0, sigma0 / math.sqrt(m))
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
    if cfg.impl == "fused_mup":
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
    else:
        groups = _standin_groups(model, cfg)
        if cfg.preset == "mup":
            model.readout_mult = 1.0 / m
    _init(groups, cfg)
    return model, groups


def make_optimizer(cfg: RunConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``fused_mup.AdamW`` on the groups, or ``torch.optim.AdamW`` on the same math baked in."""
    for g in groups:
        g["initial_lr"] = g["lr"]  # what a torch scheduler records; independent decay reads it
    if cfg.impl == "fused_mup":
        from fused_mup import AdamW

        return AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    tgroups = []
    for g in groups:
        lr = g["lr"] * g["lr_mult"]
        wd = g["weight_decay"] * g["wd_mult"]
        if g["weight_decay_mode"] == "independent" and wd:
            wd = wd / lr  # torch decays by lr_t * wd = s_t * wd_eff
        tgroups.append({"params": g["params"], "lr": lr, "weight_decay": wd, "initial_lr": lr})
    return torch.optim.AdamW(tgroups, lr=cfg.lr)
