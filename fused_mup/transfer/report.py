"""The report of a ``fused-mup transfer`` sweep: ``report.md`` and ``metrics.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fused_mup.transfer.claims import bootstrap, claim_stats, compute_summary, headline_verdicts
from fused_mup.transfer.metrics import SweepTable, bootstrap_metrics, compute_metrics
from fused_mup.transfer.plots import plot_curves, plot_eta_star, plot_transfer
from fused_mup.transfer.spec import SweepSpec
from fused_mup.transfer.sweep import RESULTS, SPEC, load_results, load_timing, run_key_id

__all__ = ["claim_sections", "make_report", "write_report"]

LN2 = math.log(2.0)
_SCHEDULE = {"cosine": "cosine to 10%", "linear": "linear to 10%", "constant": "constant"}


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "diverged"
        return f"{v:.{nd}f}" if abs(v) >= 10 ** -(nd - 1) or v == 0 else f"{v:.2e}"
    return str(v)


def _ci(ci: dict[str, Any] | None, key: str, scale: float = 1.0, nd: int = 3) -> str:
    if ci is None:
        return "1 seed"
    iv = ci.get(key)
    if iv is None:
        return "–"
    return f"[{_fmt(iv[0] * scale, nd)}, {_fmt(iv[1] * scale, nd)}]"


def _setup_lines(
    recs: list[dict[str, Any]], spec: SweepSpec | None, sweep: SweepTable
) -> list[str]:
    k0 = recs[0]["key"]
    steps = {}
    for r in recs:
        steps[int(r["key"]["width"])] = int(r["key"]["steps"])
    tokens = {w: s * k0["batch"] * k0["context"] for w, s in sorted(steps.items())}
    n_div = sum(1 for r in recs if r.get("diverged"))
    secs = sum(float(r.get("seconds") or 0) for r in recs)
    src = k0["text"] or "Python stdlib *.py sources"
    lines = [
        f"- model: `fused_mup.tiny_gpt.TinyGPT` (pre-LN, GELU, untied readout), "
        f"tokenizer {k0.get('tokenizer', 'bytes')}; depth {k0['depth']}, "
        + (f"head width {k0['head_dim']}" if k0.get("head_dim") else f"heads {k0['heads']}")
        + f", context {k0['context']}, batch {k0['batch']}",
        f"- widths {', '.join(str(int(w)) for w in sweep.widths)} (base width "
        f"{k0['base_width']}); lrs 2^{np.log2(sweep.lrs[0]):.3g} .. "
        f"2^{np.log2(sweep.lrs[-1]):.3g} ({len(sweep.lrs)} points); seeds {sweep.seeds}",
        "- budget: "
        + (
            f"{spec.tokens_per_param} tokens/param"
            if spec is not None and spec.tokens_per_param is not None
            else "fixed tokens"
        )
        + " — tokens per width "
        + ", ".join(f"{w}: {t:,}" for w, t in tokens.items()),
        f"- optimizer: fused_mup.AdamW, betas ({k0.get('beta1', 0.9)}, "
        f"{k0.get('beta2', 0.999)}), warm-up {k0['warmup']:.0%} then "
        f"{_SCHEDULE[k0.get('schedule', 'cosine')]}; "
        f"weight decay {k0['weight_decay']} ({k0['weight_decay_mode']})",
        f"- data: {src} (max {k0['max_bytes']:,} bytes, fingerprint `{k0['data']}`); "
        f"metric: held-out validation loss, nats/token",
        f"- runs: {len(recs)} ({n_div} diverged), device {k0['device']}, "
        f"{secs / 60:.1f} min of per-run wall time summed over workers",
    ]
    return lines


def _civ(ci: dict[str, np.ndarray] | None, key: str, *idx: int, nd: int = 2) -> str:
    if ci is None:
        return ""
    lo, hi = ci[key][idx]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return " [–]"
    return f" [{lo:.{nd}f}, {hi:.{nd}f}]"


def _per_width(
    sweep: SweepTable, stats: dict[str, np.ndarray], ci: dict[str, np.ndarray] | None, key: str
) -> dict[str, Any]:
    # metrics.json form: {width: {"value": v, "ci95": [lo, hi] | None}} per preset
    out: dict[str, Any] = {}
    for p, name in enumerate(sweep.presets):
        row = {}
        for w, d in enumerate(sweep.widths):
            v = float(stats[key][p, w])
            iv = None if ci is None else [float(x) for x in ci[key][p, w]]
            row[str(int(d))] = {
                "value": v if math.isfinite(v) else None,
                "ci95": None if iv is None or not all(map(math.isfinite, iv)) else iv,
            }
        out[name] = row
    return out


def claim_sections(
    sweep: SweepTable, n_boot: int, progress: bool = False
) -> tuple[list[str], dict[str, Any], dict[str, np.ndarray]]:
    """The report's first sections (verdicts, gap closed, L*, stability, compute), their
    ``metrics.json`` entries, and the point statistics."""
    stats = claim_stats(sweep)
    ci = bootstrap(sweep, claim_stats, n_boot=n_boot, progress=progress) if n_boot > 0 else None
    verdicts = headline_verdicts(sweep, stats, ci)
    W, names = sweep.widths, sweep.presets
    head = "| preset | " + " | ".join(f"d={int(w)}" for w in W) + " |"
    rule = "|---" * (len(W) + 1) + "|"
    seeds = f"{len(sweep.seeds)} seeds, 95% bootstrap intervals" if ci else "1 seed, no intervals"
    lines = ["## Verdicts", ""]
    for v in verdicts:
        lines.append(
            f"- **{v['verdict']}**: {v['claim']} (rule {v['rule']}, docs/transfer.md): "
            + _evidence(v)
        )
    if not verdicts:
        lines.append("- (needs the presets sp, sp_emb and mup_lr)")
    lines += ["", f"## Share of SP's loss gap closed ({seeds})", ""]
    for key, gap, ref in (
        ("gap_closed", "gap", "mup_lr"),
        ("gap_closed_vs_mup", "gap_vs_mup", "mup"),
    ):
        if ref not in names or "sp" not in names:
            continue
        lines += [
            f"(L*_sp − L*_preset) / (L*_sp − L*_{ref}); 1 = as good as {ref}, 0 = no better "
            "than sp, > 1 = better than the reference.",
            "",
            head,
            rule,
        ]
        for p, name in enumerate(names):
            if name in ("sp", ref):
                continue
            cells = [_fmt(float(stats[key][p, w]), 2) + _civ(ci, key, p, w) for w in range(len(W))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = [_fmt(float(stats[gap][w]), 4) + _civ(ci, gap, w, nd=4) for w in range(len(W))]
        lines += [f"| *gap L*_sp − L*_{ref}* | " + " | ".join(cells) + " |", ""]
    lines += ["## Best loss L*(d)", "", head, rule]
    for p, name in enumerate(names):
        cells = [
            _fmt(float(stats["L_star"][p, w]), 4) + _civ(ci, "L_star", p, w, nd=4)
            for w in range(len(W))
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""]
    if "instability" in sweep.aux:
        lines += [
            "## Stability at the best LR",
            "",
            "Instability: mean excess of the training loss over its running median (10 "
            "steps), nats; 0 = never above it. Curves: `curves.png`.",
            "",
            head,
            rule,
        ]
        for p, name in enumerate(names):
            cells = [
                _fmt(float(stats["instability"][p, w]), 4) + _civ(ci, "instability", p, w, nd=4)
                for w in range(len(W))
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [""]
    comp = compute_summary(sweep)
    if comp:
        lines += [
            "## Compute",
            "",
            "FLOPs = (6·N + 6·depth·context·d) per training token (N: non-embedding "
            "parameters, readout included); seconds measured per run (training loop only). "
            f"Proxy sweep: every LR and seed at d={int(W[0])}; direct sweep: the same at "
            f"d={int(W[-1])}. Loss left: L(d={int(W[-1])}, η*(d={int(W[0])})) − "
            f"L*(d={int(W[-1])}), nats.",
            "",
            "| preset | proxy sweep | direct sweep | direct / proxy (FLOPs, s) | loss left |",
            "|---|---|---|---|---|",
        ]
        for p, name in enumerate(names):
            c = comp[name]
            lines.append(
                f"| {name} | {c['proxy_flops']:.3g} FLOPs, {c['proxy_seconds']:.0f} s | "
                f"{c['direct_flops']:.3g} FLOPs, {c['direct_seconds']:.0f} s | "
                f"{_ratio(c['flops_ratio'])}, {_ratio(c['seconds_ratio'])} | "
                f"{_fmt(float(stats['loss_left'][p]), 4)}{_civ(ci, 'loss_left', p, nd=4)} |"
            )
        lines += [""]
    js: dict[str, Any] = {"verdicts": verdicts}
    for key in ("gap_closed", "gap_closed_vs_mup", "L_star", "instability"):
        js[key] = _per_width(sweep, stats, ci, key)
    js["gap"] = {
        k: {
            str(int(d)): {
                "value": _jnum(stats[k][w]),
                "ci95": None if ci is None else [_jnum(x) for x in ci[k][w]],
            }
            for w, d in enumerate(W)
        }
        for k in ("gap", "gap_vs_mup")
    }
    js["loss_left"] = {
        name: {
            "value": _jnum(stats["loss_left"][p]),
            "ci95": None if ci is None else [_jnum(x) for x in ci["loss_left"][p]],
        }
        for p, name in enumerate(names)
    }
    js["compute"] = comp
    return lines, js, stats


def _evidence(v: dict[str, Any]) -> str:
    e = v["evidence"]

    def iv(key: str, nd: int) -> str:
        lo, hi = e[key]
        return "[–]" if lo is None or hi is None else f"[{lo:.{nd}f}, {hi:.{nd}f}]"

    if v["rule"] == "H":
        g = e["gap_closed"]
        return (
            f"at d={e['width']} sp_emb closes "
            + ("–" if g is None else f"{g:.2f}")
            + f" {iv('gap_closed_ci95', 2)} of the gap L*_sp − L*_mup_lr = "
            + ("–" if e["gap_sp_minus_mup_lr"] is None else f"{e['gap_sp_minus_mup_lr']:.4f}")
            + f" {iv('gap_ci95', 4)}."
        )
    a, b, d = e["instability_sp"], e["instability_sp_emb"], e["difference"]
    if None in (a, b, d):
        return "no instability values."
    return (
        f"at d={e['width']} instability {a:.4f} (sp) → {b:.4f} (sp_emb), difference "
        f"{d:+.4f} {iv('difference_ci95', 4)}" + (f" ({d / a:+.0%})." if a > 0 else ".")
    )


def _share(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "–"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}×"


def _jnum(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def write_report(
    out: Path,
    recs: list[dict[str, Any]],
    spec: SweepSpec | None,
    n_boot: int = 200,
    plots: bool = True,
    timing: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compute metrics (+ bootstrap), write ``metrics.json``, ``report.md`` and figures."""
    sweep = SweepTable.from_records(recs)
    metrics = compute_metrics(sweep)
    ci = bootstrap_metrics(sweep, n_boot=n_boot, progress=progress) if n_boot > 0 else None
    W = sweep.widths
    dmax = int(W[-1])
    lines = [f"# fused-mup transfer: {spec.name if spec else out.name}", ""]
    wall_s = None
    if timing:
        wall_s = sum(t["wall_s"] for t in timing)
        cpu_s = sum(t["cpu_s"] for t in timing)
        last = timing[-1]
        loads = [t.get("loadavg_start") for t in timing] + [t.get("loadavg_end") for t in timing]
        loads = [x for x in loads if x is not None]
        inv = "" if len(timing) == 1 else f" over {len(timing)} invocations (resumed)"
        lines += [
            f"Wall time of the sweep: **{wall_s / 60:.1f} min**{inv}, with {last['jobs']} "
            f"worker processes on {last['cores']} cores; CPU time {cpu_s / 60:.1f} min "
            f"(so ≈ {cpu_s / 60 / max(1, min(last['jobs'], last['cores'])):.1f} min on "
            f"{min(last['jobs'], last['cores'])} otherwise idle cores)"
            + (f"; 1-min load average seen: {min(loads):.1f}–{max(loads):.1f}." if loads else "."),
            "",
        ]
    claim_lines, claim_js, stats = claim_sections(sweep, n_boot, progress)
    lines += claim_lines
    lines += ["## Setup", ""]
    lines += _setup_lines(recs, spec, sweep)
    lines += [
        "",
        "Metric definitions: `docs/transfer.md`. Logs are natural logs except where a column "
        "says log2. † = best LR at the edge of the grid or next to a diverged run (a bound, "
        "excluded from the fits).",
        "",
    ]
    if plots:
        try:
            plot_transfer(sweep, metrics, out / "transfer.png")
            plot_eta_star(sweep, metrics, out / "eta_star.png")
            lines += ["![transfer](transfer.png)", "", "![eta star](eta_star.png)", ""]
            if any(r.get("curve") for r in recs):
                plot_curves(recs, sweep, stats["best_index"], out / "curves.png")
                lines += ["![training curves](curves.png)", ""]
        except ImportError:
            lines += ["(matplotlib not installed: no figures)", ""]

    head = "| preset | " + " | ".join(f"d={int(w)}" for w in W) + " |"
    lines += ["## log2 η* per width", "", head, "|---" * (len(W) + 1) + "|"]
    for name, m in metrics.items():
        cells = [
            _fmt(v / LN2, 2) + ("†" if s != "ok" else "")
            for v, s in zip(m.log_eta_star, m.status, strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Summary", ""]
    lines += [
        f"| preset | b | E | extrap. err @{dmax} | κ | ΔL @{dmax} (extrap. LR) | R({dmax}) | R∞ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics.items():
        r_last = m.R[-1] if m.R else None
        r_inf = _fmt(m.R_inf, 4)
        if isinstance(m.R_fit, dict) and m.R_inf is None:
            r_inf = f"not saturating (≥ {_fmt(r_last, 3)})"
        lines.append(
            f"| {name} | {_fmt(m.b)} | {_fmt(m.E)} | {_fmt(m.extrap_err)} | {_fmt(m.kappa)} | "
            f"{_fmt(m.extrap_penalty, 4)} | {_fmt(r_last, 4)} | {r_inf} |"
        )
    lines += [""]

    for name, m in metrics.items():
        c = None if ci is None else ci[name]
        fit = m.R_fit
        fit_s = (
            fit
            if isinstance(fit, str) or fit is None
            else f"A={fit['A']:.3g}, γ={fit['gamma']:.2f}"
            + (" (γ at grid bound)" if fit["gamma_at_bound"] else "")
            + f", rms={fit['rms']:.2g}"
        )
        rows = [
            ("b: slope of log η* vs log d", _fmt(m.b), _ci(c, "b")),
            ("E: RMS residual of that fit (ln units)", _fmt(m.E), _ci(c, "E")),
            (
                f"extrapolation error at d={dmax}: ln η̂ − ln η* (fit on smaller widths)",
                _fmt(m.extrap_err),
                _ci(c, "extrap_err"),
            ),
            ("κ: c(d) ∝ d^κ", _fmt(m.kappa), _ci(c, "kappa")),
            (
                "c(d), ΔL ≈ c·δ² per width",
                ", ".join(_fmt(v) for v in m.c),
                "",
            ),
            (
                f"ΔL at d={dmax} with the extrapolated LR (measured; c·δ̂² in brackets)",
                f"{_fmt(m.extrap_penalty, 4)} ({_fmt(m.extrap_penalty_quad, 4)})",
                _ci(c, "extrap_penalty", nd=4),
            ),
            ("η_T = η*(d_min), the transferred LR", _fmt(m.eta_transfer, 5), ""),
            ("R(d) at η_T, per width", ", ".join(_fmt(v, 4) for v in m.R), ""),
            ("R∞ (η_T), fit R = R∞ + A d^−γ", _fmt(m.R_inf, 4), _ci(c, "R_inf", nd=4)),
            ("  fit", fit_s or "–", ""),
            (
                "R∞ with each width's LR from the power-law fit",
                _fmt(m.R_inf_fitlr, 4),
                _ci(c, "R_inf_fitlr", nd=4),
            ),
        ]
        lines += [f"## {name}", "", "| metric | value | 95% CI |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {cc} |" for a, b, cc in rows]
        lines += [""] + [f"- {n}" for n in m.notes] + ([""] if m.notes else [])

    payload = {
        "spec": spec.to_json() if spec is not None else None,
        "wall_s": wall_s,
        "widths": W.tolist(),
        "lrs": sweep.lrs.tolist(),
        "verdicts": claim_js["verdicts"],
        "gap": claim_js["gap"],
        "presets": {
            k: {
                **{
                    key: claim_js[key][k]
                    for key in ("gap_closed", "gap_closed_vs_mup", "L_star", "instability")
                },
                "loss_left": claim_js["loss_left"][k],
                "compute": claim_js["compute"].get(k),
                **v.to_dict(),
            }
            for k, v in metrics.items()
        },
        "bootstrap_95": ci,
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return payload


def make_report(
    out_dir: str | Path,
    spec: SweepSpec | None = None,
    n_boot: int = 200,
    plots: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Compute the metrics of a finished (or partial) sweep and write the report.

    Writes ``report.md``, ``metrics.json`` and (with matplotlib) ``transfer.png`` (loss vs
    log2 lr, one panel per preset, one curve per width) and ``eta_star.png`` (eta* vs width
    with the power-law fits) into ``out_dir``.

    Args:
        out_dir: the sweep's output directory.
        spec: restrict to this spec's runs (default: ``out_dir/spec.json``, else all records).
        n_boot: bootstrap replicates (used when there are >= 2 seeds).
        plots: write the figures.
        progress: show tqdm bars over the bootstrap replicates.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    out = Path(out_dir)
    recs = load_results(out / RESULTS)
    if spec is None and (out / SPEC).exists():
        spec = SweepSpec.from_json(json.loads((out / SPEC).read_text()))
    if spec is not None:
        ids = {run_key_id(c.key()) for c in spec.resolved().runs()}
        recs = [r for r in recs if r.get("id") in ids]
    if not recs:
        raise SystemExit(f"no results for this sweep in {out / RESULTS}")
    return write_report(
        out, recs, spec, n_boot=n_boot, plots=plots, timing=load_timing(out), progress=progress
    )
