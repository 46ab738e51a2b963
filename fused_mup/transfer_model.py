"""Model, data and single-run training for ``fused-mup transfer``.

A byte-level (vocab 256) decoder-only transformer -- pre-LN, GELU MLP, learned positions,
untied readout -- trained on real text: by default the Python standard library's own ``*.py``
sources, which every machine has and which need no download.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Corpus",
    "RunConfig",
    "TinyGPT",
    "load_corpus",
    "count_params",
    "train_run",
]

VOCAB = 256


# ----------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class Corpus:
    """A byte corpus split into train and validation streams.

    Attributes:
        train: uint8 tensor, the training byte stream.
        val: uint8 tensor, the held-out byte stream.
        fingerprint: short sha256 of (train, val); part of every run key.
        source: human-readable description of where the bytes came from.
    """

    train: torch.Tensor
    val: torch.Tensor
    fingerprint: str
    source: str


_CORPUS_CACHE: dict[tuple[str | None, int], Corpus] = {}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        # Third-party code and the (huge, repetitive) test suites are not "the stdlib's source".
        if rel.startswith(("site-packages/", "dist-packages/", "test/", "idlelib/idle_test/")):
            continue
        files.append(p)
    return files


def load_corpus(text: str | Path | None = None, max_bytes: int = 4_000_000) -> Corpus:
    """Load the corpus and split it deterministically.

    Default (``text=None``): the standard library's ``*.py`` files in sorted path order,
    concatenated until ``max_bytes``; every 10th file goes to validation (a file-level split,
    so no validation text is seen in training). With ``text``: the file's bytes (first
    ``max_bytes``), the last 10% held out.

    Args:
        text: optional path to a user corpus, read as bytes.
        max_bytes: cap on the total bytes read (keeps loading fast).

    Returns:
        The cached :class:`Corpus` (loaded once per process).
    """
    cache_key = (None if text is None else str(Path(text).resolve()), int(max_bytes))
    if cache_key in _CORPUS_CACHE:
        return _CORPUS_CACHE[cache_key]
    train_parts: list[bytes] = []
    val_parts: list[bytes] = []
    if text is None:
        total = 0
        for i, path in enumerate(_stdlib_files()):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            data = data[: max_bytes - total]
            (val_parts if i % 10 == 9 else train_parts).append(data)
            total += len(data)
            if total >= max_bytes:
                break
        source = f"python{sysconfig.get_python_version()} stdlib *.py ({total} bytes)"
    else:
        data = Path(text).read_bytes()[:max_bytes]
        cut = int(len(data) * 0.9)
        train_parts, val_parts = [data[:cut]], [data[cut:]]
        source = f"{Path(text).name} ({len(data)} bytes)"
    train_b, val_b = b"".join(train_parts), b"".join(val_parts)
    if len(train_b) < 4096 or len(val_b) < 1024:
        raise ValueError(f"corpus too small: {len(train_b)} train / {len(val_b)} val bytes")
    fp = hashlib.sha256(train_b + b"\0|\0" + val_b).hexdigest()[:12]
    corpus = Corpus(
        train=torch.frombuffer(bytearray(train_b), dtype=torch.uint8),
        val=torch.frombuffer(bytearray(val_b), dtype=torch.uint8),
        fingerprint=fp,
        source=source,
    )
    _CORPUS_CACHE[cache_key] = corpus
    return corpus


# ----------------------------------------------------------------------------------------------
# model


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width: int, heads: int, attn_scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_scale = attn_scale
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width, bias=False)
        self.fc_out = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            scale=self.attn_scale,
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Decoder-only byte LM: pre-LN, GELU, learned positions, untied readout.

    Args:
        width: model width d (must be divisible by ``heads``).
        depth: number of transformer blocks.
        heads: attention heads (fixed across widths, so d_head grows with d).
        context: maximum sequence length.
        attn_scale: softmax temperature; ``None`` means 1/sqrt(d_head) (SP).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        context: int,
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} not divisible by heads {heads}")
        self.width, self.depth, self.heads, self.context = width, depth, heads, context
        scale = attn_scale if attn_scale is not None else 1.0 / math.sqrt(width // heads)
        self.tok_emb = nn.Embedding(VOCAB, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, scale) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.readout = nn.Linear(width, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for blk in self.blocks:
            x = blk(x)
        return self.readout(self.ln_f(x))


def count_params(width: int, depth: int, context: int, embeddings: bool = False) -> int:
    """Parameter count of :class:`TinyGPT` (non-embedding by default, as in scaling laws)."""
    per_block = 12 * width * width + 4 * width  # qkv + proj + mlp, two LayerNorms
    n = depth * per_block + 2 * width + VOCAB * width  # blocks, final LN, readout
    if embeddings:
        n += (VOCAB + context) * width
    return n


# ----------------------------------------------------------------------------------------------
# parametrization glue


def build_model_and_groups(cfg: RunConfig) -> tuple[TinyGPT, list[dict[str, Any]]]:
    """Build the model for ``cfg.preset`` (model-side changes and init included) and its
    parameter groups; see :mod:`fused_mup.transfer_params`."""
    from fused_mup import transfer_params

    return transfer_params.build(cfg)


# ----------------------------------------------------------------------------------------------
# one run


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run's result (the resume key).

    Attributes:
        preset: parametrization preset ("sp", "mup", "mup_lr", "sp_emb", "sp_emb_sqrt").
        width: model width d.
        lr: global learning rate eta (per-role multipliers come from the preset).
        seed: init and data-order seed.
        depth: transformer blocks.
        heads: attention heads.
        context: sequence length.
        batch: sequences per step.
        steps: optimizer steps (the token budget divided by batch * context).
        base_width: width at which every preset coincides with SP (width_mult = 1).
        weight_decay: decoupled weight-decay coefficient (0 turns it off).
        weight_decay_mode: "coupled" (decay lr*wd) or "independent" (decay wd).
        warmup: fraction of steps of linear warm-up; then cosine decay to 10%.
        eval_batches: validation batches (of ``batch`` sequences) for the final loss.
        data: corpus fingerprint.
        text: user corpus path or None for the stdlib default.
        max_bytes: corpus cap.
        impl: always "fused_mup" (fused_mup.AdamW + fused_mup.param_groups); kept in the key
            (torch.optim.AdamW + the in-repo stand-in of the presets).
        device: torch device the run trains on ("cpu", "cuda", ...).
    """

    preset: str
    width: int
    lr: float
    seed: int
    depth: int = 2
    heads: int = 4
    context: int = 64
    batch: int = 16
    steps: int = 300
    base_width: int = 32
    weight_decay: float = 0.0
    weight_decay_mode: str = "independent"
    warmup: float = 0.1
    eval_batches: int = 16
    data: str = ""
    text: str | None = None
    max_bytes: int = 4_000_000
    impl: str = "fused_mup"
    device: str = "cpu"

    def key(self) -> dict[str, Any]:
        """The JSON-serializable resume key (every field changes the result)."""
        d = asdict(self)
        d["lr"] = float(f"{self.lr:.6g}")
        return d


def _lr_factor(step: int, steps: int, warmup: float) -> float:
    w = max(1, int(round(warmup * steps)))
    if step < w:
        return (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))


def _batch(
    stream: torch.Tensor, starts: torch.Tensor, context: int, device: str = "cpu"
) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    return stream[idx].long().to(device)


@torch.no_grad()
def evaluate(model: TinyGPT, corpus: Corpus, cfg: RunConfig) -> float:
    """Mean next-byte cross-entropy (nats) over a fixed, evenly spaced set of val windows."""
    model.eval()
    n = cfg.eval_batches * cfg.batch
    span = len(corpus.val) - cfg.context - 1
    starts = torch.linspace(0, span, n).long()
    total = 0.0
    for s in starts.split(cfg.batch):
        xy = _batch(corpus.val, s, cfg.context, cfg.device)
        logits = model(xy[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, VOCAB), xy[:, 1:].reshape(-1)).item() * len(s)
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
        dict with ``val_loss``, ``init_loss``, ``diverged``, ``train_loss`` (last-10-step mean),
        ``steps_done``, ``seconds``, ``params``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if cfg.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # the full sweep's GPU-hour budget needs it
    t0 = time.perf_counter()
    corpus = load_corpus(cfg.text, cfg.max_bytes)
    torch.manual_seed(cfg.seed)
    model, groups = build_model_and_groups(cfg)
    model.to(cfg.device)  # in place, so the groups still hold the model's parameters
    from fused_mup.transfer_params import make_optimizer

    opt = make_optimizer(cfg, groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    init_loss = evaluate(model, corpus, cfg)
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    span = len(corpus.train) - cfg.context - 1
    recent: list[float] = []
    diverged = False
    step = 0
    for step in range(cfg.steps):
        f = _lr_factor(step, cfg.steps, cfg.warmup)
        for g, lr0 in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr0 * f
        starts = torch.randint(0, span, (cfg.batch,), generator=gen)
        xy = _batch(corpus.train, starts, cfg.context, cfg.device)
        logits = model(xy[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), xy[:, 1:].reshape(-1))
        lv = loss.item()
        if not math.isfinite(lv):
            diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [lv])[-10:]
    val_loss = float("nan") if diverged else evaluate(model, corpus, cfg)
    if not math.isfinite(val_loss) or val_loss > init_loss:
        diverged = True
    return {
        "val_loss": val_loss if math.isfinite(val_loss) else None,
        "init_loss": init_loss,
        "diverged": diverged,
        "train_loss": sum(recent) / len(recent) if recent else None,
        "steps_done": step + 1,
        "seconds": round(time.perf_counter() - t0, 3),
        "params": count_params(cfg.width, cfg.depth, cfg.context),
    }
