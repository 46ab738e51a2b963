"""One training run of ``fused-mup transfer``: config, training loop, record.

The model is :class:`fused_mup.tiny_gpt.TinyGPT` built by :func:`fused_mup.tiny_gpt.build`;
the optimizer is :class:`fused_mup.AdamW` on the preset's groups, with a torch LR scheduler.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fused_mup import AdamW
from fused_mup.tiny_gpt import TinyGPT, build, count_params, flops_per_token
from fused_mup.transfer.data import Corpus, load_corpus

__all__ = [
    "CURVE_POINTS",
    "SCHEDULES",
    "RunConfig",
    "evaluate",
    "instability",
    "lr_factor",
    "train_run",
]

SCHEDULES = ("cosine", "linear", "constant")
CURVE_POINTS = 50  # training-loss curve kept per run: block means over steps/50 steps
SPIKE_WINDOW = 10  # running-median window of the instability measure


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run's result (the resume key).

    Attributes:
        preset: parametrization preset ("sp", "mup", "mup_lr", "sp_emb", "sp_emb_sqrt").
        width: model width d.
        lr: global learning rate eta (per-role multipliers come from the preset).
        seed: init and data-order seed.
        depth: transformer blocks.
        heads: attention heads (fixed across widths), unless ``head_dim`` is set.
        head_dim: fixed head width instead (heads = width / head_dim).
        context: sequence length.
        batch: sequences per step.
        steps: optimizer steps (the token budget divided by batch * context).
        base_width: width at which every preset coincides with SP (width_mult = 1).
        weight_decay: decoupled weight-decay coefficient (0 turns it off).
        weight_decay_mode: "coupled" (decay lr*wd) or "independent" (decay wd).
        warmup: fraction of steps of linear warm-up.
        schedule: after warm-up, "cosine" or "linear" decay to 10% of the peak, or "constant".
        beta1, beta2, eps: AdamW's.
        eval_batches: validation batches (of ``batch`` sequences) for the final loss.
        data: corpus fingerprint.
        text: user corpus path or None for the stdlib default.
        max_bytes: corpus cap.
        tokenizer: "bytes" or "bpe-<N>" (see :func:`fused_mup.transfer.data.load_corpus`).
        zero_readout: zero-initialize the readout under ``mup``.
        mup_attention: the μP attention scale 1/d_head on (True) or off (False); None: exactly
            under ``mup``.
        device: torch device the run trains on ("cpu", "cuda", ...).
    """

    preset: str
    width: int
    lr: float
    seed: int
    depth: int = 2
    heads: int = 4
    head_dim: int | None = None
    context: int = 64
    batch: int = 16
    steps: int = 300
    base_width: int = 32
    weight_decay: float = 0.0
    weight_decay_mode: str = "independent"
    warmup: float = 0.1
    schedule: str = "cosine"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eval_batches: int = 16
    data: str = ""
    text: str | None = None
    max_bytes: int = 4_000_000
    tokenizer: str = "bytes"
    zero_readout: bool = False
    mup_attention: bool | None = None
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """The JSON-serializable resume key (every field changes the result)."""
        d = asdict(self)
        d["lr"] = float(f"{self.lr:.6g}")
        return d


def lr_factor(step: int, steps: int, warmup: float, schedule: str = "cosine") -> float:
    """LR multiplier at ``step``: linear warm-up over ``warmup``·steps, then the schedule."""
    w = max(1, int(round(warmup * steps)))
    if step < w:
        return (step + 1) / w
    t = (step - w) / max(1, steps - w)
    if schedule == "cosine":
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - 0.9 * t
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def instability(losses: list[float], window: int = SPIKE_WINDOW) -> float:
    """Mean excess of the training loss over its running median (nats; 0 = never above it).

    ``mean_t max(0, L_t − median(L_{t−window} … L_{t−1}))`` over the steps that have a full
    window. A smoothly falling curve scores ~0; spikes and oscillation score their height.
    """
    if len(losses) <= window:
        return 0.0
    x = torch.tensor(losses, dtype=torch.float64)
    med = x.unfold(0, window, 1)[:-1].median(dim=1).values
    return float((x[window:] - med).clamp_min(0).mean())


def _curve(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    # [last step of the block, block mean] pairs; steps counted from 1
    if not losses:
        return []
    x = torch.tensor(losses, dtype=torch.float64)
    edges = torch.linspace(0, len(losses), min(points, len(losses)) + 1).round().long().tolist()
    return [
        [e1, round(float(x[e0:e1].mean()), 5)]
        for e0, e1 in zip(edges[:-1], edges[1:], strict=True)
        if e1 > e0
    ]


def _batch(stream: torch.Tensor, starts: torch.Tensor, context: int, device: str) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    return stream[idx].long().to(device)


@torch.no_grad()
def evaluate(model: TinyGPT, corpus: Corpus, cfg: RunConfig) -> float:
    """Mean next-token cross-entropy (nats/token) over fixed, evenly spaced val windows."""
    model.eval()
    n = cfg.eval_batches * cfg.batch
    starts = torch.linspace(0, len(corpus.val) - cfg.context - 1, n).long()
    total = 0.0
    for s in starts.split(cfg.batch):
        xy = _batch(corpus.val, s, cfg.context, cfg.device)
        logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, corpus.vocab), xy[:, 1:].reshape(-1))
        total += loss.item() * len(s)
    model.train()
    return total / n


def train_run(cfg: RunConfig, threads: int | None = 1) -> dict[str, Any]:
    """Train one model and return its record (the results-file line, minus bookkeeping).

    A run is *diverged* if any training loss or the final validation loss is NaN/inf, or the
    final validation loss is above the validation loss at initialization. Training stops early
    on a non-finite loss (the record is still written).

    Args:
        cfg: the run configuration.
        threads: ``torch.set_num_threads`` value (1 inside parallel workers); None leaves it.

    Returns:
        dict with ``val_loss`` (nats/token), ``val_loss_per_byte``, ``init_loss``,
        ``diverged``, ``train_loss`` (last-10-step mean), ``curve`` (downsampled training loss),
        ``instability``, ``steps_done``, ``params``, ``flops`` (training, see
        :func:`fused_mup.tiny_gpt.flops_per_token`), ``train_seconds`` and ``seconds``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the full sweep's GPU budget needs it
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.text, cfg.max_bytes, cfg.tokenizer)
    if cfg.data and corpus.fingerprint != cfg.data:
        raise RuntimeError(
            f"corpus fingerprint {corpus.fingerprint} != the run key's {cfg.data}: the "
            "tokenizer or corpus differs between processes"
        )
    torch.manual_seed(cfg.seed)
    model, groups = build(
        cfg.preset,
        cfg.width,
        base_width=cfg.base_width,
        depth=cfg.depth,
        heads=cfg.heads,
        head_dim=cfg.head_dim,
        context=cfg.context,
        vocab=corpus.vocab,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        weight_decay_mode=cfg.weight_decay_mode,
        zero_readout=cfg.zero_readout,
        mup_attention=cfg.mup_attention,
    )
    model.to(cfg.device)  # in place, so the groups still hold the model's parameters
    opt = AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup, cfg.schedule)
    )
    init_loss = evaluate(model, corpus, cfg)
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    span = len(corpus.train) - cfg.context - 1
    losses: list[float] = []
    diverged = False
    t_train = time.perf_counter()
    for _ in range(cfg.steps):
        starts = torch.randint(0, span, (cfg.batch,), generator=gen)
        xy = _batch(corpus.train, starts, cfg.context, cfg.device)
        logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, corpus.vocab), xy[:, 1:].reshape(-1))
        lv = loss.item()
        if not math.isfinite(lv):
            diverged = True
            break
        losses.append(lv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t_train
    val_loss = math.nan if diverged else evaluate(model, corpus, cfg)
    if not math.isfinite(val_loss) or val_loss > init_loss:
        diverged = True
    steps_done = len(losses) + (1 if diverged and len(losses) < cfg.steps else 0)
    n_params = count_params(cfg.width, cfg.depth, cfg.context, corpus.vocab)
    fin = math.isfinite(val_loss)
    return {
        "val_loss": val_loss if fin else None,
        "val_loss_per_byte": val_loss / corpus.bytes_per_token if fin else None,
        "init_loss": init_loss,
        "diverged": diverged,
        "train_loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "curve": _curve(losses),
        "instability": instability(losses),
        "steps_done": steps_done,
        "params": n_params,
        "flops": flops_per_token(cfg.width, cfg.depth, cfg.context, corpus.vocab)
        * len(losses)
        * cfg.batch
        * cfg.context,
        "train_seconds": round(train_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
