"""Coordinate check: activation scale per layer across widths, after a few training steps.

Trains a tiny transformer for a few AdamW steps at several widths under a preset and records
each layer's mean |x| per step with forward hooks. Under ``mup`` the curves are flat in width;
under ``sp`` the attention logits and output logits grow with width.

CLI: ``fused-mup coord-check --presets sp mup --widths 64 128 256 512 --steps 5 --out DIR``
writes ``DIR/coord_check.png``, ``DIR/coord_check.csv`` and ``DIR/coord_check.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fused_mup.presets import attention_scale, mup_init_, param_groups, scale_readout_

__all__ = ["CoordCheckResult", "TinyTransformer", "coord_check", "main", "write_outputs"]

# Presets whose model side is full μP (1/m readout, 1/d_head attention, μP init).
_FULL_MUP = {"mup"}
_RECORDED = ("attn_logits", "attn", "mlp")  # per block, plus wte and lm_head


class _Tap(nn.Module):
    """Identity with a name, so a forward hook can see an intermediate (attention logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int, attn_scale: float) -> None:
        super().__init__()
        self.n_head, self.attn_scale = n_head, attn_scale
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_logits = _Tap()
        self.attn = nn.Linear(d, d, bias=False)  # output projection: its output is recorded
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d, bias=False)
        self.mlp = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        s = self.attn_logits((q @ k.transpose(-1, -2)) * self.attn_scale)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        a = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + self.attn(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A small pre-LN GPT with a fixed head count (so d_head grows with width).

    Args:
        width: model width d.
        vocab: vocabulary size.
        n_layer: number of blocks.
        n_head: number of heads (fixed across widths).
        seq_len: maximum sequence length (positional table size).
        attn_scale: attention logit scale; None means SP's ``1/sqrt(d_head)``.
    """

    def __init__(
        self,
        width: int,
        vocab: int = 256,
        n_layer: int = 2,
        n_head: int = 4,
        seq_len: int = 32,
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        d_head = width // n_head
        scale = 1 / math.sqrt(d_head) if attn_scale is None else attn_scale
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(_Block(width, n_head, scale) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@dataclass
class CoordCheckResult:
    """Mean |x| per (width, step, layer) for one preset.

    Attributes:
        preset: the preset name.
        widths: widths run, ascending.
        steps: number of recorded steps (step 1 is the forward at init).
        layers: recorded module names, in forward order.
        scale: ``{(width, step, layer): mean |x|}``, averaged over seeds.
    """

    preset: str
    widths: list[int]
    steps: int
    layers: list[str]
    scale: dict[tuple[int, int, str], float] = field(default_factory=dict)

    def slope(self, layer: str, step: int | None = None) -> float:
        """Least-squares slope of log(mean |x|) against log(width) at ``step`` (default: last)."""
        step = self.steps if step is None else step
        if any(self.scale[(w, step, layer)] <= 0 for w in self.widths):
            return math.nan  # e.g. zero-initialised readout at step 1
        xs = [math.log(w) for w in self.widths]
        ys = [math.log(self.scale[(w, step, layer)]) for w in self.widths]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )


def _make_optimizer(
    groups_fn, optimizer: str
) -> tuple[torch.optim.Optimizer, list[dict]]:  # groups_fn(bake) -> groups
    import fused_mup

    fused_ready = isinstance(fused_mup.AdamW, type) and issubclass(
        fused_mup.AdamW, torch.optim.Optimizer
    )
    if optimizer == "fused" or (optimizer == "auto" and fused_ready):
        groups = groups_fn(False)
        return fused_mup.AdamW(groups), groups
    if optimizer not in ("auto", "torch"):
        raise ValueError(f"optimizer must be 'auto', 'fused' or 'torch', got {optimizer!r}")
    groups = groups_fn(True)  # torch optimizers need the multipliers folded in
    return torch.optim.AdamW(groups), groups


def coord_check(
    preset: str,
    widths: Sequence[int] = (64, 128, 256, 512),
    steps: int = 5,
    *,
    base_width: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    n_layer: int = 2,
    n_head: int = 4,
    vocab: int = 256,
    seq_len: int = 32,
    batch_size: int = 8,
    seeds: int = 1,
    std: float = 0.02,
    zero_readout: bool = True,
    optimizer: str = "auto",
) -> CoordCheckResult:
    """Train :class:`TinyTransformer` for ``steps`` steps per width and record mean |x|.

    ``mup`` also applies the full-μP model side: μP init (:func:`mup_init_`), a 1/m readout
    multiplier and a ``sqrt(base_d_head)/d_head`` attention scale. Other presets use SP's model:
    N(0, std²) init everywhere and ``1/sqrt(d_head)``. Tokens are random (fixed per seed).

    Args:
        preset: a preset name from :data:`fused_mup.presets.PRESETS`.
        widths: model widths (multiples of ``n_head``).
        steps: training steps; the forward of step t (params after t-1 updates) is recorded.
        base_width: width of the base model (default: the smallest width).
        lr: base learning rate.
        weight_decay: base weight decay.
        n_layer: blocks.
        n_head: heads (fixed across widths).
        vocab: vocabulary size.
        seq_len: sequence length.
        batch_size: sequences per step.
        seeds: seeds to average over.
        std: init standard deviation at the base width.
        zero_readout: under ``mup``, zero-initialise the readout (mup's ``readout_zero_init``),
            so step 1's logits are 0 and later ones show only the learned part.
        optimizer: ``"auto"`` (:class:`fused_mup.AdamW` with plain groups once it is a real
            optimizer, else :class:`torch.optim.AdamW` with baked groups), ``"fused"`` or
            ``"torch"``.

    Returns:
        The :class:`CoordCheckResult`.
    """
    widths = sorted(widths)
    base_width = widths[0] if base_width is None else base_width
    full_mup = preset in _FULL_MUP
    base_d_head = base_width // n_head

    def build(w: int) -> TinyTransformer:
        scale = attention_scale(w // n_head, base_d_head) if full_mup else None
        return TinyTransformer(w, vocab, n_layer, n_head, seq_len, attn_scale=scale)

    with torch.device("meta"):
        base = build(base_width)
    sums: dict[tuple[int, int, str], float] = {}
    layers: list[str] = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        data = torch.randint(0, vocab, (steps, batch_size, seq_len + 1), generator=gen)
        for w in widths:
            torch.manual_seed(seed)
            model = build(w)
            if full_mup:
                groups = param_groups(model, preset, base_model=base)
                mup_init_(groups, std=std, zero_readout=zero_readout)
                scale_readout_(model.lm_head, base_width / w)
            else:
                for p in model.parameters():
                    if p.ndim >= 2:
                        nn.init.normal_(p, 0.0, std)

            def groups_fn(bake: bool, model: nn.Module = model) -> list[dict]:
                return param_groups(
                    model, preset, base_model=base, lr=lr, weight_decay=weight_decay, bake=bake
                )

            opt, _ = _make_optimizer(groups_fn, optimizer)
            record: dict[str, float] = {}
            names: list[str] = []
            hooks = []
            for name, mod in model.named_modules():
                if name in ("wte", "lm_head") or name.split(".")[-1] in _RECORDED:
                    names.append(name)

                    def hook(_m, _i, out: torch.Tensor, name: str = name, rec=record) -> None:
                        rec[name] = out.detach().abs().mean().item()

                    hooks.append(mod.register_forward_hook(hook))
            layers = names
            for t in range(steps):
                x, y = data[t, :, :-1], data[t, :, 1:]
                logits = model(x)
                for name, v in record.items():
                    sums[(w, t + 1, name)] = sums.get((w, t + 1, name), 0.0) + v / seeds
                loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            for h in hooks:
                h.remove()
    return CoordCheckResult(preset, list(widths), steps, layers, sums)


def _plot(results: Sequence[CoordCheckResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot loads
    import matplotlib.pyplot as plt

    steps = results[0].steps
    shown = sorted({1, max(1, steps // 3), max(1, 2 * steps // 3), steps})
    fig, axes = plt.subplots(
        len(results), len(shown), figsize=(3.2 * len(shown), 2.8 * len(results)), squeeze=False
    )
    for row, res in zip(axes, results, strict=True):
        for ax, t in zip(row, shown, strict=True):
            for layer in res.layers:
                ys = [res.scale[(w, t, layer)] for w in res.widths]
                ax.plot(res.widths, ys, marker="o", ms=3, label=layer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{res.preset}  t={t}", fontsize=9)
            ax.set_xlabel("width", fontsize=8)
            ax.tick_params(labelsize=7)
        row[0].set_ylabel("mean |x|", fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Sequence[CoordCheckResult], out_dir: str | Path) -> list[Path]:
    """Write ``coord_check.png``, ``coord_check.csv`` and ``coord_check.md`` into ``out_dir``.

    Args:
        results: one result per preset (same widths and steps).
        out_dir: output directory (created).

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (out / f"coord_check.{e}" for e in ("csv", "md", "png"))
    with csv_path.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["preset", "width", "step", "layer", "mean_abs"])
        for r in results:
            for (w, t, layer), v in sorted(r.scale.items()):
                wr.writerow([r.preset, w, t, layer, f"{v:.6g}"])
    layers = results[0].layers
    lines = [
        f"# Coordinate check (widths {results[0].widths}, {results[0].steps} steps)",
        "",
        "Slope of log mean|x| against log width at the last step (0 = flat in width).",
        "",
        "| layer | " + " | ".join(r.preset for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines += [
        f"| {layer} | " + " | ".join(f"{r.slope(layer):+.3f}" for r in results) + " |"
        for layer in layers
    ]
    for r in results:
        lines += ["", f"## {r.preset}: mean |x| at step {r.steps}", ""]
        lines += ["| layer | " + " | ".join(str(w) for w in r.widths) + " |"]
        lines += ["|---|" + "---|" * len(r.widths)]
        lines += [
            f"| {layer} | "
            + " | ".join(f"{r.scale[(w, r.steps, layer)]:.4g}" for w in r.widths)
            + " |"
            for layer in r.layers
        ]
    md_path.write_text("\n".join(lines) + "\n")
    _plot(results, png_path)
    return [png_path, csv_path, md_path]


def main(argv: list[str] | None = None) -> int:
    """``fused-mup coord-check``: run presets across widths, write a PNG and tables."""
    p = argparse.ArgumentParser(prog="fused-mup coord-check", description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["sp", "mup"], help="presets to compare")
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256, 512])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--layers", type=int, default=2, help="transformer blocks")
    p.add_argument("--optimizer", choices=["auto", "fused", "torch"], default="auto")
    p.add_argument("--out", default="coord_check", help="output directory")
    args = p.parse_args(argv)
    results = [
        coord_check(
            preset,
            args.widths,
            args.steps,
            lr=args.lr,
            seeds=args.seeds,
            n_layer=args.layers,
            optimizer=args.optimizer,
        )
        for preset in args.presets
    ]
    paths = write_outputs(results, args.out)
    print(Path(paths[2]).read_text().split("\n## ")[0])
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0
