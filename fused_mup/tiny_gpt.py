"""The one tiny GPT: used by ``fused-mup coord-check`` and ``fused-mup transfer``.

A decoder-only transformer (pre-LN, GELU MLP of width 4d, learned positions, untied readout,
no biases in the matrices) with a fixed head count, so d_head = d / heads grows with width.
:func:`build` is the one place where a preset becomes a model: the μP model-side changes,
the initialization and the parameter groups.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fused_mup.presets import PRESETS, attention_scale, mup_init_, param_groups, scale_readout_

__all__ = [
    "OVERRIDES",
    "RECORDED",
    "TinyGPT",
    "Tap",
    "build",
    "count_params",
    "flops_per_token",
]

VOCAB = 256  # bytes

# The names are unambiguous, so say them rather than rely on param_groups' module-type rules.
OVERRIDES = {
    "readout.weight": "readout",
    "blocks.*.attn.qkv.weight": "hidden",
    "blocks.*.attn.proj.weight": "hidden",
    "blocks.*.mlp.fc.weight": "hidden",
    "blocks.*.mlp.proj.weight": "hidden",
}

#: Modules whose outputs a coordinate check records (last name component; plus the two ends).
RECORDED = ("tok_emb", "logits", "attn", "mlp", "readout")


class Tap(nn.Module):
    """Identity with a name, so a forward hook can see an intermediate (attention logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Attention(nn.Module):
    """Causal self-attention. ``explicit`` materializes the logits through ``self.logits``
    (a :class:`Tap`, for hooks); otherwise SDPA, which is faster and never forms them."""

    def __init__(self, width: int, heads: int, scale: float, explicit: bool) -> None:
        super().__init__()
        self.heads, self.scale, self.explicit = heads, scale, explicit
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.logits = Tap() if explicit else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.explicit:
            s = self.logits((q @ k.transpose(-1, -2)) * self.scale)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            a = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.proj(a.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """GELU MLP of width 4d."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, scale: float, explicit: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, scale, explicit)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Decoder-only LM: pre-LN, GELU, learned positions, untied readout.

    Args:
        width: model width d (a multiple of ``heads``).
        depth: transformer blocks.
        heads: attention heads (fixed across widths, so d_head grows with d).
        context: maximum sequence length.
        vocab: vocabulary size (256: bytes).
        attn_scale: attention logit scale; None means SP's 1/sqrt(d_head).
        record_attention: compute attention explicitly so that ``blocks.i.attn.logits`` can be
            hooked (the coordinate check); False uses SDPA (the transfer sweep's speed).
    """

    def __init__(
        self,
        width: int,
        depth: int = 2,
        heads: int = 4,
        context: int = 32,
        vocab: int = VOCAB,
        attn_scale: float | None = None,
        record_attention: bool = False,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.width, self.depth, self.heads, self.context, self.vocab = (
            width,
            depth,
            heads,
            context,
            vocab,
        )
        scale = 1.0 / math.sqrt(width // heads) if attn_scale is None else attn_scale
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(
            Block(width, heads, scale, record_attention) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.readout(self.ln_f(x))


def count_params(
    width: int, depth: int, context: int, vocab: int = VOCAB, embeddings: bool = False
) -> int:
    """Parameters of :class:`TinyGPT`: non-embedding by default (blocks, final LN, readout)."""
    per_block = 12 * width * width + 4 * width  # qkv + proj + mlp, two LayerNorms
    n = depth * per_block + 2 * width + vocab * width
    if embeddings:
        n += (vocab + context) * width
    return n


def flops_per_token(width: int, depth: int, context: int, vocab: int = VOCAB) -> int:
    """Training FLOPs per token: 6·N + 6·depth·context·width (Kaplan et al. 2020, eq. 2.1).

    N is the non-embedding parameter count (readout included: it is a matmul); the second
    term is the attention scores and weighted sum (QKᵀ and AV, 2·context·width multiply-adds
    each per layer, counted over the full context), times 3 for forward + backward.
    """
    return 6 * count_params(width, depth, context, vocab) + 6 * depth * context * width


@torch.no_grad()
def build(
    preset: str,
    width: int,
    *,
    base_width: int,
    depth: int = 2,
    heads: int = 4,
    head_dim: int | None = None,
    context: int = 32,
    vocab: int = VOCAB,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    weight_decay_mode: str = "independent",
    record_attention: bool = False,
    zero_readout: bool = False,
    mup_attention: bool | None = None,
    bake: bool = False,
) -> tuple[TinyGPT, list[dict[str, Any]]]:
    """The tiny GPT for ``preset`` at ``width``: model-side changes, init, parameter groups.

    Init (σ0 = base_width^-1/2, identical for every preset at the base width): embeddings
    N(0, σ0²); hidden matrices N(0, σ0²/m) = N(0, 1/d); LayerNorm (1, 0); readout N(0, 1/d),
    except under ``mup``: N(0, σ0²) (or zeros with ``zero_readout``) with the logits × 1/m.
    ``mup`` also scales attention logits by √d_head,0/d_head instead of 1/√d_head.

    Args:
        preset: a name from :data:`fused_mup.presets.PRESETS`.
        width: model width d; the width multiplier is m = width / base_width.
        base_width: the width at which every preset is SP.
        depth, heads, context, vocab: the architecture (see :class:`TinyGPT`).
        head_dim: a fixed head width instead of a fixed head count (heads = width/head_dim).
        lr, weight_decay, weight_decay_mode: passed to :func:`fused_mup.param_groups`.
        record_attention: see :class:`TinyGPT`.
        zero_readout: zero-initialize the readout (``mup`` only, as mup's ``readout_zero_init``).
        mup_attention: use the μP attention scale; default: exactly when ``preset == "mup"``.
        bake: fold the multipliers into ``lr``/``weight_decay`` for a torch optimizer.

    Returns:
        ``(model, groups)``; the groups hold the model's parameters.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    full_mup = preset == "mup"
    m = width / base_width
    if head_dim is not None:
        heads = width // head_dim
        base_d_head = head_dim
    else:
        base_d_head = base_width // heads
    use_mup_attn = full_mup if mup_attention is None else mup_attention
    scale = attention_scale(width // heads, base_d_head) if use_mup_attn else None
    model = TinyGPT(width, depth, heads, context, vocab, scale, record_attention)
    groups = param_groups(
        model,
        preset,
        width_mult=m,
        lr=lr,
        weight_decay=weight_decay,
        weight_decay_mode=weight_decay_mode,
        overrides=OVERRIDES,
        bake=bake,
    )
    sigma0 = base_width**-0.5
    mup_init_(groups, std=sigma0, zero_readout=full_mup and zero_readout)
    if full_mup:
        scale_readout_(model.readout, 1.0 / m)
    else:
        # Rescale rather than redraw: the same random stream, so every preset is bit-identical
        # at the base width.
        model.readout.weight.mul_(1.0 / math.sqrt(m))
    return model, groups
