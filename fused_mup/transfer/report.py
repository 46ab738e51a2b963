"""The report of a ``fused-mup transfer`` sweep: ``report.md`` and ``metrics.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fused_mup.transfer.claims import claim_stats, compute_summary, headline_verdicts
from fused_mup.transfer.metrics import SweepTable, bootstrap_metrics, compute_metrics
from fused_mup.transfer.plots import plot_curves, plot_eta_star, plot_transfer
from fused_mup.transfer.spec import SweepSpec
from fused_mup.transfer.stats import INTERVAL_METHOD, MIN_SEEDS, per_seed, summarize
from fused_mup.transfer.sweep import RESULTS, SPEC, load_results, load_timing, run_key_id

__all__ = ["claim_sections", "completeness", "make_report", "write_report"]

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
        return "–"
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


def _seed_label(n: int) -> str:
    # what the cells of a per-width table are: the caption says it once
    if n >= MIN_SEEDS:
        return f"mean over {n} seeds, [{INTERVAL_METHOD}]"
    if n == 1:
        return "1 seed, no interval"
    return f"mean over {n} seeds, (range over seeds): no interval below {MIN_SEEDS} seeds"


def _cell(values: np.ndarray, nd: int) -> str:
    s = summarize(values)
    if s["mean"] is None:
        return "–"
    out = _fmt(s["mean"], nd)
    if 0 < s["n"] < np.asarray(values).size:  # some seeds undefined: say on how many
        out += f" (n={s['n']})"
        if s["n"] < 2:
            return out
    if s["interval"] is not None:
        lo, hi = s["interval"]
        return out + f" [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"
    if s["n"] >= 2:
        lo, hi = s["range"]
        return out + f" (range {_fmt(lo, nd)} – {_fmt(hi, nd)})"
    return out


def _seeds_cell(values: np.ndarray, nd: int) -> str:
    return " / ".join(_fmt(float(v), nd) for v in np.asarray(values).ravel())


def claim_sections(
    sweep: SweepTable,
) -> tuple[list[str], dict[str, Any], dict[str, np.ndarray]]:
    """The report's first sections (verdicts, gap closed, L*, η*, stability, per-seed values,
    compute), their ``metrics.json`` entries, and the seed-mean statistics."""
    stats = claim_stats(sweep)
    seeds = per_seed(sweep, claim_stats)
    verdicts = headline_verdicts(sweep, seeds)
    W, names = sweep.widths, sweep.presets
    n = len(sweep.seeds)
    head = "| preset | " + " | ".join(f"d={int(w)}" for w in W) + " |"
    rule = "|---" * (len(W) + 1) + "|"
    cap = _seed_label(n)
    lines = ["## Verdicts", ""]
    for v in verdicts:
        lines.append(
            f"- **{v['verdict']}** (n={v['n_seeds']} seeds): {v['claim']} (rule {v['rule']}, "
            "docs/transfer.md): " + _evidence(v)
        )
    if not verdicts:
        lines.append("- (needs the presets sp, sp_emb and mup_lr)")
    lines += ["", f"## Share of SP's loss gap closed: {cap}", ""]
    for key, gap, ref in (
        ("gap_closed", "gap", "mup_lr"),
        ("gap_closed_vs_mup", "gap_vs_mup", "mup"),
    ):
        if ref not in names or "sp" not in names:
            continue
        lines += [
            f"(L*_sp − L*_preset) / (L*_sp − L*_{ref}) per seed; 1 = as good as {ref}, "
            "0 = no better than sp, > 1 = better than the reference.",
            "",
            head,
            rule,
        ]
        for p, name in enumerate(names):
            if name in ("sp", ref):
                continue
            cells = [_cell(seeds[key][p, w], 2) for w in range(len(W))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = [_cell(seeds[gap][w], 4) for w in range(len(W))]
        lines += [f"| *gap L*_sp − L*_{ref}* | " + " | ".join(cells) + " |", ""]
    tables = [("L_star", "Best loss L*(d)", 4), ("log2_eta_star", "log2 η*(d) per seed", 2)]
    for key, title, nd in tables:
        lines += [f"## {title}: {cap}", ""]
        if key == "log2_eta_star":
            lines += ["– : the seed's best LR is at the grid edge (η* only bounded).", ""]
        lines += [head, rule]
        for p, name in enumerate(names):
            cells = [_cell(seeds[key][p, w], nd) for w in range(len(W))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [""]
    if "instability" in sweep.aux:
        lines += [
            f"## Stability at the best LR: {cap}",
            "",
            "Instability: mean excess of the training loss over its running median (10 "
            "steps), nats; 0 = never above it; each seed at its own best LR. Curves: "
            "`curves.png`.",
            "",
            head,
            rule,
        ]
        for p, name in enumerate(names):
            cells = [_cell(seeds["instability"][p, w], 4) for w in range(len(W))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [""]
    w = len(W) - 1
    lines += [
        f"## Per-seed values at d={int(W[-1])} (seeds {', '.join(map(str, sweep.seeds))})",
        "",
        "| preset | log2 η* | L* | gap share (vs mup_lr) | instability |",
        "|---|---|---|---|---|",
    ]
    for p, name in enumerate(names):
        lines.append(
            f"| {name} | {_seeds_cell(seeds['log2_eta_star'][p, w], 2)} | "
            f"{_seeds_cell(seeds['L_star'][p, w], 4)} | "
            f"{_seeds_cell(seeds['gap_closed'][p, w], 2)} | "
            + (_seeds_cell(seeds["instability"][p, w], 4) if "instability" in sweep.aux else "–")
            + " |"
        )
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
            f"L*(d={int(W[-1])}), nats ({cap}).",
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
                f"{_cell(seeds['loss_left'][p], 4)} |"
            )
        lines += [""]
    js: dict[str, Any] = {"verdicts": verdicts}
    for key in ("gap_closed", "gap_closed_vs_mup", "L_star", "log2_eta_star", "instability"):
        js[key] = {
            name: {str(int(d)): summarize(seeds[key][p, i]) for i, d in enumerate(W)}
            for p, name in enumerate(names)
        }
    js["gap"] = {
        k: {str(int(d)): summarize(seeds[k][i]) for i, d in enumerate(W)}
        for k in ("gap", "gap_vs_mup")
    }
    js["loss_left"] = {name: summarize(seeds["loss_left"][p]) for p, name in enumerate(names)}
    js["compute"] = comp
    return lines, js, stats


def _evidence(v: dict[str, Any]) -> str:
    e = v["evidence"]
    if v["rule"] == "H":
        g, gap = e["gap_closed"], e["gap_sp_minus_mup_lr"]
        return (
            f"at d={e['width']}, the gap L*_sp − L*_mup_lr: {gap['text']}. "
            f"Share of it sp_emb closes: {g['text']}."
        )
    d = e["instability_sp_emb_minus_sp"]
    return f"at d={e['width']}, instability of sp_emb minus sp: {d['text']}."


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}×"


def write_report(
    out: Path,
    recs: list[dict[str, Any]],
    spec: SweepSpec | None,
    n_boot: int = 200,
    plots: bool = True,
    timing: list[dict[str, Any]] | None = None,
    progress: bool = False,
    partial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute metrics (+ bootstrap), write ``metrics.json``, ``report.md`` and figures.

    ``partial`` (from :func:`completeness`) marks a sweep that is still running: the report
    says so first and lists what is finished."""
    sweep = SweepTable.from_records(recs)
    metrics = compute_metrics(sweep)
    ci = bootstrap_metrics(sweep, n_boot=n_boot, progress=progress) if n_boot > 0 else None
    W = sweep.widths
    dmax = int(W[-1])
    lines = [f"# fused-mup transfer: {spec.name if spec else out.name}", ""]
    if partial is not None:
        lines += _partial_banner(partial)
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
    claim_lines, claim_js, stats = claim_sections(sweep)
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
    lines += [
        "## log2 η* per width (seed-mean curves, the input of the fits)",
        "",
        head,
        "|---" * (len(W) + 1) + "|",
    ]
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

    n = len(sweep.seeds)
    ci_head = (
        f"95% percentile bootstrap over {n} seeds ({n_boot} replicates)"
        if ci is not None
        else f"interval: none ({n} seed{'s' if n != 1 else ''} < {MIN_SEEDS})"
    )
    lines += [
        "Per-preset metrics below are fits on the seed-mean table (value column); a single "
        "seed's fit is often undefined, so their interval is a percentile bootstrap over seeds "
        f"(given only with ≥ {MIN_SEEDS} seeds), not the per-seed t-interval of the claims.",
        "",
    ]
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
        lines += [f"## {name}", "", f"| metric | value | {ci_head} |", "|---|---|---|"]
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
                    for key in (
                        "gap_closed",
                        "gap_closed_vs_mup",
                        "L_star",
                        "log2_eta_star",
                        "instability",
                    )
                },
                "loss_left": claim_js["loss_left"][k],
                "compute": claim_js["compute"].get(k),
                **v.to_dict(),
            }
            for k, v in metrics.items()
        },
        "statistics": {
            "n_seeds": n,
            "claims": f"mean of per-seed values; {INTERVAL_METHOD}, only with >= {MIN_SEEDS} "
            "seeds (fewer: range); verdicts by rule V on the per-seed values",
            "metrics": ci_head,
        },
        "metrics_intervals": ci,
        "partial": partial,
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return payload


def completeness(
    recs: list[dict[str, Any]], spec: SweepSpec
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The records of the (preset, seed) sweeps of ``spec`` that are complete, and a
    description of what is unfinished (None when everything is finished).

    A half-finished seed would bias its per-seed η* and L* (its best LR may not have run yet),
    so a partial report leaves it out.
    """
    want: dict[tuple[str, int], int] = {}
    for c in spec.resolved().runs():
        want[(c.preset, c.seed)] = want.get((c.preset, c.seed), 0) + 1
    got: dict[tuple[str, int], int] = {}
    for r in recs:
        g = (r["key"]["preset"], int(r["key"]["seed"]))
        got[g] = got.get(g, 0) + 1
    if all(got.get(g, 0) >= n for g, n in want.items()):
        return recs, None
    full = {g for g, n in want.items() if got.get(g, 0) >= n}
    complete: dict[str, list[int]] = {}
    for p, s in sorted(full, key=lambda g: (spec.presets.index(g[0]), g[1])):
        complete.setdefault(p, []).append(s)
    unfinished = [
        (p, s, f"{got.get((p, s), 0)}/{n} runs")
        for (p, s), n in sorted(want.items(), key=lambda g: (spec.presets.index(g[0][0]), g[0][1]))
        if (p, s) not in full
    ]
    info = {
        "finished": len(recs),
        "total": sum(want.values()),
        "complete": complete,
        "unfinished": unfinished,
    }
    used = [r for r in recs if (r["key"]["preset"], int(r["key"]["seed"])) in full]
    return used, info


def _partial_banner(partial: dict[str, Any]) -> list[str]:
    return [
        f"**Partial result: {partial['finished']} of {partial['total']} runs finished.** "
        "Only (preset, seed) sweeps with every width and LR finished are used: "
        + (", ".join(f"{p} seeds {s}" for p, s in partial["complete"].items()) or "none")
        + ". Unfinished: "
        + (", ".join(f"{p} seed {s} ({k})" for p, s, k in partial["unfinished"]) or "none")
        + ". Rerun the same command to resume; this report is regenerated from "
        "`results.jsonl`.",
        "",
    ]


def _write_progress_only(out: Path, spec: SweepSpec, partial: dict[str, Any]) -> dict[str, Any]:
    # Runs have finished but no (preset, seed) sweep is whole yet: say what is done, no numbers.
    lines = [f"# fused-mup transfer: {spec.name}", "", *_partial_banner(partial)]
    lines += ["No (preset, seed) sweep is complete yet, so there are no results to report.", ""]
    payload = {"spec": spec.to_json(), "partial": partial}
    (out / "metrics.json").write_text(json.dumps(payload, indent=1) + "\n")
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
    partial = None
    if spec is not None:
        ids = {run_key_id(c.key()) for c in spec.resolved().runs()}
        recs = [r for r in recs if r.get("id") in ids]
        recs, partial = completeness(recs, spec)
    if not recs and partial is not None and partial["finished"]:
        return _write_progress_only(out, spec, partial)
    if not recs:
        raise SystemExit(f"no results for this sweep in {out / RESULTS}")
    return write_report(
        out,
        recs,
        spec,
        n_boot=n_boot,
        plots=plots,
        timing=load_timing(out),
        progress=progress,
        partial=partial,
    )
