"""What a ``fused-mup transfer`` sweep runs: :class:`SweepSpec`, the grid and its budget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fused_mup.tiny_gpt import count_params
from fused_mup.transfer.data import load_corpus
from fused_mup.transfer.train import RunConfig

__all__ = ["HEADLINE", "PRESETS", "SweepSpec", "pow2"]

PRESETS = ("sp", "mup", "mup_lr", "sp_emb", "sp_emb_sqrt")
# The presets that decide the headline (rule H): their runs go first, so a sweep cut short
# still answers it.
HEADLINE = ("sp", "mup_lr", "sp_emb")


def pow2(lo: int, hi: int) -> tuple[float, ...]:
    """``(2**lo, ..., 2**hi)``."""
    return tuple(2.0**e for e in range(lo, hi + 1))


@dataclass
class SweepSpec:
    """A sweep: the grid plus everything shared by its runs.

    Exactly one of ``tokens`` (fixed tokens per run) and ``tokens_per_param`` (tokens =
    ratio x non-embedding parameters, so wider models train longer) sets the budget. The
    fields after ``base_width`` are those of :class:`fused_mup.transfer.train.RunConfig`.
    """

    presets: tuple[str, ...] = PRESETS
    widths: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    lrs: tuple[float, ...] = pow2(-13, -5)
    seeds: tuple[int, ...] = (0,)
    depth: int = 4
    heads: int = 16
    head_dim: int | None = None
    context: int = 128
    batch: int = 32
    base_width: int = 128
    tokens: int | None = 4096 * 400  # 400 steps of 32 x 128: ~1.2e17 FLOPs in all (docs)
    tokens_per_param: float | None = None
    weight_decay: float = 0.0
    weight_decay_mode: str = "independent"
    warmup: float = 0.1
    schedule: str = "cosine"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eval_batches: int = 16
    text: str | None = None
    max_bytes: int = 8_000_000
    tokenizer: str = "bytes"
    zero_readout: bool = False
    mup_attention: bool | None = None
    device: str = "auto"
    name: str = "full"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: Any) -> SweepSpec:
        """The ``--quick`` sweep: 3 seeds, <= 10 min on a 2-core CPU (docs/transfer.md)."""
        base: dict[str, Any] = dict(
            widths=(16, 32, 64, 128),
            lrs=pow2(-10, -4),
            seeds=(0, 1, 2),
            depth=2,
            heads=2,
            context=32,
            batch=16,
            base_width=16,
            tokens=16 * 32 * 100,  # 100 steps
            eval_batches=8,
            max_bytes=2_000_000,
            device="cpu",
            name="quick",
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def standard(cls, **kw: Any) -> SweepSpec:
        """The ``--standard`` sweep: 3 seeds, widths 32-256, 409,600 tokens per run (8x the
        quick horizon), sized for <= 2 h on an idle 2-core CPU (docs/transfer.md "Tiers").

        The LR grid 2^-10 .. 2^-4 covers sp's optimum at d=256 (2^-8 on the quick run's
        m = 8) and mup_lr's at the base width (2^-4 .. 2^-5); the quick grid's edges beyond
        those were never optimal and are trimmed.
        """
        base: dict[str, Any] = dict(
            widths=(32, 64, 128, 256),
            lrs=pow2(-10, -4),
            seeds=(0, 1, 2),
            depth=2,
            heads=4,
            context=64,
            batch=32,
            base_width=32,
            tokens=32 * 64 * 200,  # 200 steps: 409,600 tokens
            eval_batches=16,
            max_bytes=2_000_000,
            device="cpu",
            name="standard",
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def full(cls, **kw: Any) -> SweepSpec:
        """The default / ``--full`` sweep, sized for one GPU in ~20-25 min (docs/transfer.md)."""
        return cls(**kw)

    def resolved(self) -> SweepSpec:
        """Copy with ``device`` resolved from "auto"."""
        if self.device != "auto":
            return self
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return dataclasses.replace(self, device=dev)

    def corpus(self):
        """The sweep's :class:`fused_mup.transfer.data.Corpus` (cached)."""
        return load_corpus(self.text, self.max_bytes, self.tokenizer)

    def steps_for(self, width: int, vocab: int = 256) -> int:
        """Optimizer steps of a run at ``width`` under this budget."""
        per_step = self.batch * self.context
        if self.tokens_per_param is not None:
            tokens = self.tokens_per_param * count_params(width, self.depth, self.context, vocab)
        elif self.tokens is not None:
            tokens = self.tokens
        else:
            raise ValueError("set tokens or tokens_per_param")
        return max(1, math.ceil(tokens / per_step))

    def runs(self) -> list[RunConfig]:
        """Every run of the grid."""
        if self.device == "auto":
            return self.resolved().runs()
        corpus = self.corpus()
        text = None if self.text is None else str(Path(self.text).resolve())
        shared = {
            k: getattr(self, k)
            for k in (
                "depth heads head_dim context batch base_width weight_decay weight_decay_mode "
                "warmup schedule beta1 beta2 eps eval_batches max_bytes tokenizer zero_readout "
                "mup_attention device"
            ).split()
        }
        return [
            RunConfig(
                preset=p,
                width=w,
                lr=lr,
                seed=s,
                steps=self.steps_for(w, corpus.vocab),
                data=corpus.fingerprint,
                text=text,
                **shared,
            )
            for p in self.presets
            for w in self.widths
            for lr in self.lrs
            for s in self.seeds
        ]

    def to_json(self) -> dict[str, Any]:
        """JSON form (for ``spec.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepSpec:
        """Inverse of :meth:`to_json` (fields this version does not know are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        for k in ("presets", "widths", "lrs", "seeds"):
            d[k] = tuple(d[k])
        return cls(**d)
