"""Markdown report and figures for ``fused-mup transfer`` (matplotlib imported lazily)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fused_mup.transfer_metrics import Sweep, bootstrap_metrics, compute_metrics

if TYPE_CHECKING:
    from fused_mup.transfer import SweepSpec

__all__ = ["plot_eta_star", "plot_transfer", "write_report"]

LN2 = math.log(2.0)


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


def plot_transfer(sweep: Sweep, metrics: dict[str, Any], path: Path) -> None:
    """Loss vs log2(lr): one panel per preset, one curve per width, eta* marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = sweep.mean_loss()
    P, W = len(sweep.presets), len(sweep.widths)
    fig, axes = plt.subplots(1, P, figsize=(3.3 * P, 3.4), sharey=True, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, W))
    x = np.log2(sweep.lrs)
    fin = mean[np.isfinite(mean)]
    lo = float(fin.min()) if fin.size else 0.0
    hi = min(float(np.percentile(fin, 90)) if fin.size else 1.0, lo + 1.2)
    top = hi + 0.04 * (hi - lo)
    for p, name in enumerate(sweep.presets):
        ax = axes[0, p]
        m = metrics[name]
        for w in range(W):
            y = mean[p, w]
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], "-o", ms=3, color=colors[w], label=f"d={int(sweep.widths[w])}")
            div = np.isinf(y)
            if div.any():  # diverged runs sit on the top edge as crosses
                ax.plot(x[div], np.full(div.sum(), top), "x", color=colors[w], ms=5, clip_on=False)
            ls = m.log_eta_star[w]
            if m.status[w] in ("ok", "edge") and math.isfinite(ls):
                ax.plot(ls / LN2, m.loss_star[w], "*", color=colors[w], ms=10, mec="k", mew=0.5)
        ax.set_title(name)
        ax.set_xlabel("log2(lr)")
        ax.set_ylim(lo - 0.04 * (hi - lo), top)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation loss (nats/byte)")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("LR transfer across width (★ = η*, × = diverged)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_eta_star(sweep: Sweep, metrics: dict[str, Any], path: Path) -> None:
    """log2 eta* vs log2 width per preset, with the power-law fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    W = sweep.widths
    lw = np.log2(W)
    for i, name in enumerate(sweep.presets):
        m = metrics[name]
        col = f"C{i}"
        y = np.array(m.log_eta_star) / LN2
        ok = np.array([s == "ok" for s in m.status])
        edge = np.array([s == "edge" for s in m.status])
        label = (
            name
            if m.b is None
            else f"{name}: b={m.b:+.2f}" + ("" if m.E is None else f", E={m.E:.2f}")
        )
        ax.plot(lw[ok], y[ok], "o", color=col, label=label)
        if edge.any():
            ax.plot(lw[edge], y[edge], "o", mfc="none", color=col)
        if m.b is not None:
            xx = np.linspace(lw[0], lw[-1], 20)
            ax.plot(xx, (m.a + m.b * xx * LN2) / LN2, "--", color=col, lw=1)
    ax.set_xticks(lw, [str(int(w)) for w in W])
    ax.set_xlabel("width d")
    ax.set_ylabel("log2 η*")
    ax.set_title("optimal LR vs width (fit: log η* = a + b log d)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _setup_lines(recs: list[dict[str, Any]], spec: SweepSpec | None, sweep: Sweep) -> list[str]:
    k0 = recs[0]["key"]
    steps = {}
    for r in recs:
        steps[int(r["key"]["width"])] = int(r["key"]["steps"])
    tokens = {w: s * k0["batch"] * k0["context"] for w, s in sorted(steps.items())}
    n_div = sum(1 for r in recs if r.get("diverged"))
    secs = sum(float(r.get("seconds") or 0) for r in recs)
    src = k0["text"] or "Python stdlib *.py sources"
    lines = [
        f"- model: byte-level decoder-only transformer, pre-LN, GELU, untied readout; "
        f"depth {k0['depth']}, heads {k0['heads']}, context {k0['context']}, batch {k0['batch']}",
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
        f"- optimizer: AdamW ({k0['impl']}), warm-up {k0['warmup']:.0%} then cosine to 10%; "
        f"weight decay {k0['weight_decay']} ({k0['weight_decay_mode']})",
        f"- data: {src} (max {k0['max_bytes']:,} bytes, fingerprint `{k0['data']}`); "
        f"metric: held-out validation loss, nats/byte",
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
    sweep = Sweep.from_records(recs)
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
