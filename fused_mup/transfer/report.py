"""The report of a ``fused-mup transfer`` sweep: ``report.md`` and ``metrics.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fused_mup.transfer.metrics import SweepTable, bootstrap_metrics, compute_metrics
from fused_mup.transfer.plots import plot_eta_star, plot_transfer
from fused_mup.transfer.spec import SweepSpec
from fused_mup.transfer.sweep import RESULTS, SPEC, load_results, load_timing, run_key_id

__all__ = ["make_report", "write_report"]

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


def write_report(
    out: Path,
    recs: list[dict[str, Any]],
    spec: SweepSpec | None,
    n_boot: int = 200,
    plots: bool = True,
    timing: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compute metrics (+ bootstrap), write ``metrics.json``, ``report.md`` and figures."""
    sweep = SweepTable.from_records(recs)
    metrics = compute_metrics(sweep)
    ci = bootstrap_metrics(sweep, n_boot=n_boot) if n_boot > 0 else None
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
        "presets": {k: v.to_dict() for k, v in metrics.items()},
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
    return write_report(out, recs, spec, n_boot=n_boot, plots=plots, timing=load_timing(out))
