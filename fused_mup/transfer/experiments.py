"""The two experiments beside the width sweep: weight decay on/off, and vocabulary size.

Each runs ordinary sweeps (resumable, one sub-folder per arm, each with its own report) and
then writes one comparison: ``weight_decay.md`` / ``.json`` / ``.png`` or ``vocab.md`` /
``.json`` / ``.png``. The rules behind the verdicts are in ``docs/transfer.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fused_mup.transfer.claims import claim_stats, weight_decay_stats, weight_decay_verdict
from fused_mup.transfer.metrics import SweepTable
from fused_mup.transfer.plots import pyplot
from fused_mup.transfer.report import make_report
from fused_mup.transfer.spec import SweepSpec, pow2
from fused_mup.transfer.stats import INTERVAL_METHOD, MIN_SEEDS, per_seed, summarize
from fused_mup.transfer.sweep import run_sweep

__all__ = [
    "VOCAB_TOKENIZERS",
    "run_vocab",
    "run_weight_decay",
    "vocab_spec",
    "weight_decay_spec",
]

VOCAB_TOKENIZERS = ("bytes", "bpe-2048", "bpe-8192")


def weight_decay_spec(quick: bool = True, standard: bool = False, **kw: Any) -> SweepSpec:
    """The WD experiment's sweep (the "off" arm): fixed tokens per parameter, so wider
    models train longer, as in the paper's setting. ``quick``: sized for a 2-core CPU, 3
    seeds; ``standard``: the same grid with 6 seeds (~20 CPU-min), for power."""
    base: dict[str, Any] = dict(
        presets=("sp", "mup_lr"),
        tokens=None,
        tokens_per_param=1.0,
        weight_decay=0.0,
        weight_decay_mode="coupled",
        name="weight-decay",
    )
    if quick or standard:
        base.update(
            widths=(16, 32, 64),
            base_width=16,
            lrs=pow2(-8, -3),
            seeds=tuple(range(6 if standard else 3)),
            depth=2,
            heads=2,
            context=32,
            batch=8,
            eval_batches=8,
            max_bytes=2_000_000,
            device="cpu",
        )
    else:  # one GPU: ~9e16 FLOPs with 3 seeds, see docs/transfer.md "Sizing"
        base.update(widths=(128, 256, 512), base_width=128, lrs=pow2(-12, -6), seeds=(0, 1, 2))
    base.update(kw)
    return SweepSpec(**base)


def run_weight_decay(
    spec: SweepSpec,
    out_dir: str | Path,
    weight_decay: float = 0.1,
    jobs: int | None = None,
    progress: bool = True,
    n_boot: int = 200,
    plots: bool = True,
) -> dict[str, Any]:
    """Run ``spec`` with weight decay off (``out/off``) and at ``weight_decay`` (``out/on``),
    then compare E and κ per preset, seed by seed (the arms of a seed share init and data
    order, so ΔE and Δκ are paired), and apply rule W.

    Returns:
        The dict written to ``weight_decay.json``.
    """
    out = Path(out_dir)
    if spec.tokens_per_param is None:
        raise ValueError("the weight-decay claim is about fixed tokens per parameter")
    arms = {
        "off": dataclasses.replace(spec, weight_decay=0.0),
        "on": dataclasses.replace(spec, weight_decay=weight_decay),
    }
    recs: list[dict[str, Any]] = []
    for arm, s in arms.items():
        recs += run_sweep(s, out / arm, jobs=jobs, progress=progress)
        make_report(out / arm, s, n_boot=n_boot, plots=plots, progress=progress)
    table = SweepTable.from_records(
        recs, label=lambda k: k["preset"] + ("|wd" if k["weight_decay"] > 0 else "")
    )
    presets = list(spec.presets)
    seeds = per_seed(table, lambda t, idx: weight_decay_stats(t, presets, idx))
    pooled = weight_decay_stats(table, presets)  # on the seed-mean table, for reference
    verdict = weight_decay_verdict(presets, seeds)
    rows = []
    for i, p in enumerate(presets):
        row: dict[str, Any] = {"preset": p}
        for k in ("E_off", "E_on", "dE", "kappa_off", "kappa_on", "dkappa"):
            row[k] = summarize(seeds[k][i])
            row[k]["seed_mean_table"] = _num(pooled[k][i])
        rows.append(row)
    payload = {
        "spec": spec.to_json(),
        "weight_decay": weight_decay,
        "weight_decay_mode": spec.weight_decay_mode,
        "statistics": f"per-seed E and κ (each seed's own sweep); mean, {INTERVAL_METHOD} "
        f"(only with >= {MIN_SEEDS} seeds); verdicts by rule V on the per-seed paired "
        "differences",
        "rows": rows,
        "verdict": verdict,
    }
    (out / "weight_decay.json").write_text(json.dumps(payload, indent=1) + "\n")
    _weight_decay_md(out, spec, weight_decay, rows, verdict)
    if plots:
        _weight_decay_png(out / "weight_decay.png", rows)
    return payload


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _cell(row: dict[str, Any], k: str, nd: int = 3) -> str:
    s = row[k]
    if s["mean"] is None:
        return "–"
    sign = "+" if k.startswith("d") else ""
    out = f"{s['mean']:{sign}.{nd}f}"
    if s["interval"] is not None:
        out += f" [{s['interval'][0]:{sign}.{nd}f}, {s['interval'][1]:{sign}.{nd}f}]"
    elif s["n"] >= 2:
        out += f" (range {s['range'][0]:{sign}.{nd}f} – {s['range'][1]:{sign}.{nd}f})"
    return out


def _weight_decay_md(
    out: Path, spec: SweepSpec, wd: float, rows: list[dict[str, Any]], verdict: dict[str, Any]
) -> None:
    n = len(spec.seeds)
    lines = [
        "# fused-mup transfer --experiment weight-decay",
        "",
        f"**{verdict['verdict']}**: {verdict['claim']} (rule W, docs/transfer.md).",
        "",
        f"Weight decay {wd} ({spec.weight_decay_mode}) against 0, at "
        f"{spec.tokens_per_param} tokens per non-embedding parameter; widths "
        f"{', '.join(map(str, spec.widths))}, {len(spec.lrs)} LRs, seeds {list(spec.seeds)}. "
        "E and κ are fitted on each seed's own sweep; cells are the mean over seeds "
        + (
            f"[{INTERVAL_METHOD}]"
            if n >= MIN_SEEDS
            else f"(range over seeds; no interval below {MIN_SEEDS} seeds)"
        )
        + "; Δ = on − off, paired by seed. The arms' own reports: `off/report.md`, "
        "`on/report.md`.",
        "",
        "| preset | E (WD off) | E (WD on) | ΔE | κ (WD off) | κ (WD on) | Δκ | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v = verdict["per_preset"][r["preset"]]
        lines.append(
            f"| {r['preset']} | {_cell(r, 'E_off')} | {_cell(r, 'E_on')} | {_cell(r, 'dE')} | "
            f"{_cell(r, 'kappa_off')} | {_cell(r, 'kappa_on')} | {_cell(r, 'dkappa')} | "
            f"ΔE < 0: {v['E']}; Δκ > 0: {v['kappa']} |"
        )
    lines += ["", "Evidence (rule V, per preset):", ""]
    for r in rows:
        v = verdict["per_preset"][r["preset"]]
        lines.append(f"- {r['preset']}, ΔE < 0: {v['dE']['text']}")
        lines.append(f"- {r['preset']}, Δκ > 0: {v['dkappa']['text']}")
    lines += ["", "![E and kappa with and without weight decay](weight_decay.png)", ""]
    (out / "weight_decay.md").write_text("\n".join(lines) + "\n")


def _weight_decay_png(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        plt = pyplot()
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    x = np.arange(len(rows))
    for ax, key, title in ((axes[0], "E", "E (fit residual)"), (axes[1], "kappa", "κ")):
        for j, (arm, off) in enumerate((("off", -0.15), ("on", 0.15))):
            cells = [r[f"{key}_{arm}"] for r in rows]
            v = np.array([np.nan if c["mean"] is None else c["mean"] for c in cells])
            ax.bar(x + off, v, 0.3, color=f"C{j}", label=f"WD {arm}", alpha=0.6)
            for i, c in enumerate(cells):  # every seed, so n is visible
                pts = [y for y in c["per_seed"] if y is not None]
                ax.plot([x[i] + off] * len(pts), pts, "k.", ms=4)
                if c["interval"] is not None:
                    ax.plot([x[i] + off] * 2, c["interval"], "k-", lw=1)
        ax.set_xticks(x, [r["preset"] for r in rows])
        ax.set_title(title + " (dots: seeds; bar: mean; line: 95% t-interval)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# vocabulary (arXiv 2506.15025: with vocab >> width, the embedding LR should go as sqrt(m))


def vocab_spec(quick: bool = True, **kw: Any) -> SweepSpec:
    """The vocabulary experiment's sweep for one tokenizer (set ``tokenizer=``)."""
    base: dict[str, Any] = dict(presets=("sp_emb", "sp_emb_sqrt"), name="vocab")
    if quick:
        base.update(
            widths=(128,),
            base_width=16,
            lrs=pow2(-9, -5),
            seeds=(0,),
            depth=2,
            heads=2,
            context=32,
            batch=16,
            tokens=16 * 32 * 100,
            eval_batches=8,
            max_bytes=2_000_000,
            device="cpu",
        )
    base.update(kw)
    return SweepSpec(**base)


def run_vocab(
    spec: SweepSpec,
    out_dir: str | Path,
    tokenizers: tuple[str, ...] = VOCAB_TOKENIZERS,
    jobs: int | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Run ``spec`` once per tokenizer (``out/<tokenizer>``) and compare ``sp_emb`` (×m)
    with ``sp_emb_sqrt`` (×√m) against vocab / width.

    Returns:
        The dict written to ``vocab.json``.
    """
    out = Path(out_dir)
    rows = []
    for tok in tokenizers:
        s = dataclasses.replace(spec, tokenizer=tok)
        recs = run_sweep(s, out / tok, jobs=jobs, progress=progress)
        make_report(out / tok, s, n_boot=0, plots=False)
        table = SweepTable.from_records(recs)
        st = claim_stats(table)
        vocab = s.corpus().vocab
        names = table.presets
        for w, d in enumerate(table.widths):
            row: dict[str, Any] = {
                "tokenizer": tok,
                "vocab": vocab,
                "width": int(d),
                "m": float(d) / spec.base_width,
                "vocab_per_width": vocab / float(d),
                "bytes_per_token": round(s.corpus().bytes_per_token, 4),
            }
            for p, name in enumerate(names):
                row[f"L_{name}"] = _num(st["L_star"][p, w])
                row[f"gap_closed_{name}"] = _num(st["gap_closed"][p, w])
            a, b = row.get("L_sp_emb"), row.get("L_sp_emb_sqrt")
            row["sqrt_minus_m"] = None if a is None or b is None else round(b - a, 6)
            rows.append(row)
    over = sorted(
        (r for r in rows if r["sqrt_minus_m"] is not None), key=lambda r: r["vocab_per_width"]
    )
    wins = [r["vocab_per_width"] for r in over if r["sqrt_minus_m"] < 0]
    losses = [r["vocab_per_width"] for r in over if r["sqrt_minus_m"] >= 0]
    # "overtakes": sqrt(m) is better at this ratio and at every larger one measured
    cross = next((v for v in wins if all(x < v for x in losses)), None)
    payload = {
        "spec": spec.to_json(),
        "tokenizers": list(tokenizers),
        "rows": rows,
        "sqrt_overtakes_at_vocab_per_width": cross,
    }
    (out / "vocab.json").write_text(json.dumps(payload, indent=1) + "\n")
    _vocab_md(out, spec, rows, cross)
    if plots:
        _vocab_png(out / "vocab.png", rows)
    return payload


def _vocab_md(out: Path, spec: SweepSpec, rows: list[dict[str, Any]], cross: float | None) -> None:
    seeds = len(spec.seeds)
    ref = "mup_lr" in spec.presets
    top = max(r["vocab_per_width"] for r in rows)
    lines = [
        "# fused-mup transfer --experiment vocab",
        "",
        "Does the embedding LR multiplier √m (`sp_emb_sqrt`) beat m (`sp_emb`) once the "
        "vocabulary is much larger than the width (arXiv 2506.15025)? Byte-level BPE "
        "tokenizers (HF `tokenizers`) trained on the training split of the same corpus, "
        f"widths {', '.join(map(str, spec.widths))} (base width {spec.base_width}), "
        f"{len(spec.lrs)} LRs, {seeds} seed{'s' if seeds > 1 else ''}. L* in nats/token "
        "(compare within a row; the tokenizers differ in bytes per token).",
        "",
        (
            f"**√m overtakes m at vocab/width ≥ {cross:g}**."
            if cross is not None
            else f"**√m does not overtake m at these sizes** (vocab/width up to {top:g})."
        )
        + (" One seed: no intervals." if seeds == 1 else ""),
        "",
        "| tokenizer | vocab | d | vocab/d | bytes/token | L* sp_emb (×m) | "
        "L* sp_emb_sqrt (×√m) | √m − m |" + (" L* mup_lr |" if ref else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if ref else ""),
    ]
    for r in sorted(rows, key=lambda r: r["vocab_per_width"]):
        f = lambda v: "–" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(
            f"| {r['tokenizer']} | {r['vocab']} | {r['width']} | {r['vocab_per_width']:g} | "
            f"{r['bytes_per_token']:.2f} | {f(r.get('L_sp_emb'))} | {f(r.get('L_sp_emb_sqrt'))} | "
            + ("–" if r["sqrt_minus_m"] is None else f"{r['sqrt_minus_m']:+.4f}")
            + (f" | {f(r.get('L_mup_lr'))} |" if ref else " |")
        )
    lines += ["", "![sqrt(m) minus m against vocab/width](vocab.png)", ""]
    (out / "vocab.md").write_text("\n".join(lines) + "\n")


def _vocab_png(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        plt = pyplot()
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    for j, d in enumerate(sorted({r["width"] for r in rows})):
        rs = sorted(
            (r for r in rows if r["width"] == d and r["sqrt_minus_m"] is not None),
            key=lambda r: r["vocab_per_width"],
        )
        ax.plot(
            [r["vocab_per_width"] for r in rs],
            [r["sqrt_minus_m"] for r in rs],
            "-o",
            color=f"C{j}",
            label=f"d={d}",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocab / width")
    ax.set_ylabel("L*(×√m) − L*(×m), nats/token")
    ax.set_title("below 0: √m beats m", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
