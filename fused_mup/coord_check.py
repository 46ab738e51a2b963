"""Coordinate check: activation scale per layer across widths, after a few training steps.

:func:`coord_check` takes model factories ``{width: factory}``, as microsoft/mup's
``get_coord_data`` does, so it checks any model: each factory returns ``(model, optimizer)``,
and forward hooks record each layer's mean |x| at every step. Under a correct μP the curves
are flat in width; under SP the attention logits and output logits grow with width.
:func:`tiny_gpt_factories` gives the factories of :mod:`fused_mup.tiny_gpt` under a preset.

CLI: ``fused-mup coord-check --presets sp,mup --widths 64,128,256,512 --steps 5 --out DIR``
writes ``DIR/coord_check.png``, ``DIR/coord_check.csv`` and ``DIR/coord_check.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fused_mup import AdamW
from fused_mup.cli_args import add_list, number, positive_int
from fused_mup.presets import PRESETS
from fused_mup.tiny_gpt import RECORDED, VOCAB, build

__all__ = [
    "CoordCheckResult",
    "Factory",
    "coord_check",
    "main",
    "random_batches",
    "recorded_layer",
    "tiny_gpt_factories",
    "write_outputs",
]

#: Builds one model and its optimizer; called once per seed (after ``torch.manual_seed``).
Factory = Callable[[], tuple[nn.Module, torch.optim.Optimizer]]


@dataclass
class CoordCheckResult:
    """Mean |x| per (width, step, layer) for one family of models.

    Attributes:
        name: what was checked (the preset name for :func:`tiny_gpt_factories`).
        widths: widths run, ascending.
        steps: number of recorded steps (step 1 is the forward at init).
        layers: recorded module names, in forward order.
        scale: ``{(width, step, layer): mean |x|}``, averaged over seeds.
    """

    name: str
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


def _leaves(name: str, module: nn.Module) -> bool:
    return bool(name) and next(module.children(), None) is None


def _lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def coord_check(
    models: Mapping[int, Factory],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int | None = None,
    seeds: int = 1,
    layers: Callable[[str, nn.Module], bool] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _lm_loss,
    name: str = "",
    progress: bool = False,
) -> CoordCheckResult:
    """Train each width's model for ``steps`` steps and record every chosen layer's mean |x|.

    Args:
        models: ``{width: factory}``; each factory returns a fresh ``(model, optimizer)``.
        batches: ``(input, target)`` per step; the same batches for every width and seed.
        steps: steps to run (default: ``len(batches)``); step t records the forward of the
            params after t-1 updates.
        seeds: seeds to average over (``torch.manual_seed(seed)`` before each factory call).
        layers: ``(name, module) -> bool`` choosing the modules whose outputs are recorded
            (default: every leaf module).
        loss_fn: ``(output, target) -> loss`` (default: cross-entropy over the last dim).
        name: label of the result.
        progress: show a tqdm bar.

    Returns:
        The :class:`CoordCheckResult`.
    """
    widths = sorted(models)
    steps = len(batches) if steps is None else steps
    if len(widths) < 2:
        raise ValueError(f"a coordinate check needs >= 2 widths, got {widths}")
    if not 1 <= steps <= len(batches):
        raise ValueError(f"steps must be in [1, {len(batches)}] (the batches given), got {steps}")
    pick = _leaves if layers is None else layers
    sums: dict[tuple[int, int, str], float] = {}
    names: list[str] = []
    bar = _bar(seeds * len(widths), name, progress)
    for seed in range(seeds):
        for w in widths:
            torch.manual_seed(seed)
            model, opt = models[w]()
            record: dict[str, float] = {}
            hooks, names = [], []
            for mod_name, mod in model.named_modules():
                if pick(mod_name, mod):
                    names.append(mod_name)

                    def hook(_m, _i, out, key: str = mod_name, rec=record) -> None:
                        rec[key] = out.detach().float().abs().mean().item()

                    hooks.append(mod.register_forward_hook(hook))
            try:
                for t in range(steps):
                    x, y = batches[t]
                    loss = loss_fn(model(x), y)
                    for key, v in record.items():
                        sums[(w, t + 1, key)] = sums.get((w, t + 1, key), 0.0) + v / seeds
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            finally:
                for h in hooks:
                    h.remove()
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    return CoordCheckResult(name, widths, steps, names, sums)


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"coord-check {desc}".strip(), unit="model", file=sys.stderr)


def tiny_gpt_factories(
    preset: str,
    widths: Sequence[int],
    *,
    base_width: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    depth: int = 2,
    heads: int = 4,
    context: int = 32,
    vocab: int = VOCAB,
    zero_readout: bool = True,
    optimizer: str = "fused",
) -> dict[int, Factory]:
    """``{width: factory}`` for :class:`fused_mup.tiny_gpt.TinyGPT` under ``preset``.

    The model comes from :func:`fused_mup.tiny_gpt.build` (the transfer audit's glue) with the
    attention logits exposed as ``blocks.i.attn.logits``; record them with
    ``layers=recorded_layer``.

    Args:
        preset: a name from :data:`fused_mup.presets.PRESETS`.
        widths: model widths (multiples of ``heads``).
        base_width: the width at which every preset is SP (default: the smallest width).
        lr, weight_decay: base hyperparameters.
        depth, heads, context, vocab: the architecture.
        zero_readout: under ``mup``, zero-initialize the readout (mup's
            ``readout_zero_init``), so step 1's logits are 0.
        optimizer: ``"fused"`` (:class:`fused_mup.AdamW` on the groups) or ``"torch"``
            (:class:`torch.optim.AdamW` on baked groups: an outside check of the presets).
    """
    if optimizer not in ("fused", "torch"):
        raise ValueError(f"optimizer must be 'fused' or 'torch', got {optimizer!r}")
    base = min(widths) if base_width is None else base_width

    def factory(w: int) -> Factory:
        def make() -> tuple[nn.Module, torch.optim.Optimizer]:
            model, groups = build(
                preset,
                w,
                base_width=base,
                depth=depth,
                heads=heads,
                context=context,
                vocab=vocab,
                lr=lr,
                weight_decay=weight_decay,
                record_attention=True,
                zero_readout=zero_readout,
                bake=optimizer == "torch",
            )
            opt = torch.optim.AdamW(groups) if optimizer == "torch" else AdamW(groups)
            return model, opt

        return make

    return {w: factory(w) for w in widths}


def recorded_layer(name: str, _module: nn.Module) -> bool:
    """The tiny GPT's recorded layers: embeddings, attention logits and outputs, MLP, readout."""
    return name.split(".")[-1] in RECORDED


def random_batches(
    steps: int, batch: int = 8, context: int = 32, vocab: int = VOCAB, seed: int = 1000
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of uniformly random tokens, ``(input, next-token target)`` pairs."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (steps, batch, context + 1), generator=gen)
    return [(d[:, :-1], d[:, 1:]) for d in data]


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
            ax.set_title(f"{res.name}  t={t}", fontsize=9)
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
                wr.writerow([r.name, w, t, layer, f"{v:.6g}"])
    layers = results[0].layers
    lines = [
        f"# Coordinate check (widths {results[0].widths}, {results[0].steps} steps)",
        "",
        "Slope of log mean|x| against log width at the last step (0 = flat in width).",
        "",
        "| layer | " + " | ".join(r.name for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines += [
        f"| {layer} | " + " | ".join(f"{r.slope(layer):+.3f}" for r in results) + " |"
        for layer in layers
    ]
    for r in results:
        lines += ["", f"## {r.name}: mean |x| at step {r.steps}", ""]
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


def build_parser() -> argparse.ArgumentParser:
    """The ``fused-mup coord-check`` argument parser."""
    p = argparse.ArgumentParser(
        prog="fused-mup coord-check",
        description="Activation scale per layer of the tiny GPT across widths, after a few "
        "AdamW steps, per preset. Lists: comma- or space-separated.",
    )
    add_list(p, "--presets", default=("sp", "mup"), help=", ".join(PRESETS))
    add_list(p, "--widths", item=positive_int, default=(64, 128, 256, 512), help=">= 2 widths")
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--lr", type=number, default=1e-2)
    p.add_argument("--seeds", type=positive_int, default=1)
    p.add_argument("--layers", type=positive_int, default=2, help="transformer blocks")
    p.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    p.add_argument("--optimizer", choices=["fused", "torch"], default="fused")
    p.add_argument("--out", default="coord_check", help="output directory")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``fused-mup coord-check``: run presets across widths, write a PNG and tables."""
    p = build_parser()
    args = p.parse_args(argv)
    bad = sorted(set(args.presets) - set(PRESETS))
    if bad:
        p.error(f"unknown presets {bad}; choose from {', '.join(PRESETS)}")
    widths = sorted(set(args.widths))
    if len(widths) < 2:
        p.error(f"--widths needs at least 2 different widths, got {list(args.widths)}")
    odd = [w for w in widths if w % args.heads]
    if odd:
        p.error(f"widths {odd} are not multiples of --heads {args.heads}")
    batches = random_batches(args.steps)
    results = []
    for preset in args.presets:
        factories = tiny_gpt_factories(
            preset,
            widths,
            lr=args.lr,
            depth=args.layers,
            heads=args.heads,
            optimizer=args.optimizer,
        )
        results.append(
            coord_check(
                factories,
                batches,
                seeds=args.seeds,
                layers=recorded_layer,
                name=preset,
                progress=not args.no_progress,
            )
        )
    paths = write_outputs(results, args.out)
    print(Path(paths[2]).read_text().split("\n## ")[0])
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0
