"""The model, data and training loop the optimizer lifecycle tests share."""

from __future__ import annotations

import torch
from tolerances import assert_close
from torch import nn

import fused_mup
from fused_mup.launcher import KernelConfig

SMALL_TILES = KernelConfig(block=32, chunk_size=64)
FP32 = torch.float32


def tiny_model(device, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Embedding(11, 6), nn.Linear(6, 9), nn.GELU(), nn.LayerNorm(9), nn.Linear(9, 11)
    ).to(device)


def model_groups(model, lr_mults=(2.0, 0.5, 1.0), wd=0.1):
    params = list(model.parameters())
    return [
        {"params": params[0:1], "lr_mult": lr_mults[0], "wd_mult": 0.0},
        {"params": params[1:3], "lr_mult": lr_mults[1], "wd_mult": 2.0},
        {"params": params[3:], "lr_mult": lr_mults[2], "weight_decay": wd},
    ]


def baked(groups, defaults_lr, defaults_wd):
    out = []
    for g in groups:
        lr = g.get("lr", defaults_lr)
        wd = g.get("weight_decay", defaults_wd)
        out.append(
            {
                "params": g["params"],
                "lr": lr * g.get("lr_mult", 1.0),
                "weight_decay": wd * g.get("wd_mult", 1.0),
            }
        )
    return out


def batch(device, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 11, (4, 5), generator=gen).to(device)


def loss_fn(model, tokens):
    logits = model(tokens)
    return nn.functional.cross_entropy(logits.reshape(-1, 11), tokens.roll(1, 1).reshape(-1))


def ours(params_or_groups, device, **kw):
    return fused_mup.AdamW(params_or_groups, backend="triton", kernel_config=SMALL_TILES, **kw)


def assert_models_close(a: nn.Module, b: nn.Module, what: str):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert_close(pa, pb, FP32, f"{what}: {name}")


def train(model, opt, device, steps, start=0, scheduler=None, scaler=None, inject_inf_at=()):
    for step in range(start, start + steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch(device, step))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            if step in inject_inf_at:
                next(model.parameters()).grad.view(-1)[0] = float("inf")
            scaler.step(opt)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
