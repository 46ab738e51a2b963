"""The paper's claims, computed from a sweep table: gap closed, stability, weight decay, compute.

Definitions and the verdict rules are written out in ``docs/transfer.md`` ("Claims and
verdicts"); each function here names the rule it implements. numpy only.

A verdict is one of :data:`VERDICTS`. Intervals are 95% percentile bootstrap intervals over
seeds (the same seed draw for every cell of a replicate, as in
:func:`fused_mup.transfer.metrics.bootstrap_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fused_mup.transfer.metrics import (
    SweepTable,
    compute_metrics,
    find_optimum,
    loss_at,
    replicates,
)

__all__ = [
    "MOST",
    "VERDICTS",
    "bootstrap",
    "claim_stats",
    "compute_summary",
    "decide",
    "headline_verdicts",
    "weight_decay_stats",
    "weight_decay_verdict",
]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = (
    "supported",
    "not supported",
    "inconclusive at these widths/seeds",
)
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
MOST = 0.5  # "recovers most of the advantage": closes at least half of SP's gap
BASE = "sp"
REFS = ("mup_lr", "mup")


def _opts(table: SweepTable, mean: np.ndarray) -> list[list[Any]]:
    x = np.log(table.lrs)
    W = range(len(table.widths))
    return [[find_optimum(x, mean[p, w]) for w in W] for p in range(len(table.presets))]


def claim_stats(table: SweepTable, seed_idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-width numbers behind the claims, on the seed mean (or a seed resample).

    Returns arrays (``[p, w]`` unless said otherwise, nan where undefined):
        ``L_star``: best loss L*(d) (the parabola's minimum, as for η*).
        ``best_index``: index of the best grid LR (-1 if none).
        ``gap_closed``: (L*_sp − L*_p) / (L*_sp − L*_mup_lr); ``gap_closed_vs_mup``: the same
            with ``mup`` as the reference. Undefined where the denominator is 0 (the base width,
            where every preset is SP) or a preset is missing.
        ``gap`` / ``gap_vs_mup`` (``[w]``): L*_sp − L*_ref, the advantage there is to close.
        ``instability``: seed-mean instability of the run at the best grid LR.
        ``instability_diff`` (``[w]``): instability of sp_emb minus that of sp.
        ``loss_left`` (``[p]``): L(d_max, η_T) − L*(d_max), the loss lost at the largest width by
            using the smallest width's η* (zero-shot transfer) instead of sweeping there.
    """
    mean = table.mean_loss(seed_idx)
    opts = _opts(table, mean)
    P, W = len(table.presets), len(table.widths)
    L = np.array([[o.loss if o.status != "none" else np.nan for o in row] for row in opts])
    best = np.array([[o.index if o.status != "none" else -1 for o in row] for row in opts], float)
    out: dict[str, np.ndarray] = {"L_star": L, "best_index": best}
    names = table.presets
    for ref, key in zip(REFS, ("gap_closed", "gap_closed_vs_mup"), strict=True):
        out[key] = np.full((P, W), np.nan)
        gap_key = "gap" if ref == "mup_lr" else "gap_vs_mup"
        out[gap_key] = np.full(W, np.nan)
        if BASE in names and ref in names:
            den = L[names.index(BASE)] - L[names.index(ref)]
            out[gap_key] = den
            with np.errstate(divide="ignore", invalid="ignore"):
                g = (L[names.index(BASE)][None, :] - L) / den[None, :]
            out[key] = np.where(np.abs(den)[None, :] > 1e-12, g, np.nan)
    inst = table.aux.get("instability")
    out["instability"] = np.full((P, W), np.nan)
    if inst is not None:
        x = inst if seed_idx is None else inst[..., seed_idx]
        for p in range(P):
            for w in range(W):
                if opts[p][w].status != "none":
                    out["instability"][p, w] = np.nanmean(x[p, w, opts[p][w].index])
    out["instability_diff"] = np.full(W, np.nan)
    if "sp" in names and "sp_emb" in names:
        ins = out["instability"]
        out["instability_diff"] = ins[names.index("sp_emb")] - ins[names.index("sp")]
    x = np.log(table.lrs)
    left = np.full(P, np.nan)
    for p in range(P):
        o0, on = opts[p][0], opts[p][-1]
        if o0.status != "none" and on.status != "none":
            left[p] = loss_at(x, mean[p, -1], on, o0.log_eta) - on.loss
    out["loss_left"] = left
    return out


def bootstrap(
    table: SweepTable,
    stat: Callable[[SweepTable, np.ndarray | None], dict[str, np.ndarray]],
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = False,
) -> dict[str, np.ndarray] | None:
    """Percentile intervals of every array ``stat`` returns: ``{key: array[..., 2]}``.

    Each replicate draws ``len(seeds)`` seeds with replacement. An entry's interval is nan if
    fewer than half the replicates give a finite value. None with fewer than 2 seeds.
    """
    S = len(table.seeds)
    if S < 2:
        return None
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    for _ in replicates(n_boot, "bootstrap: claims", progress):
        for k, v in stat(table, rng.integers(0, S, S)).items():
            draws.setdefault(k, []).append(np.asarray(v, float))
    out = {}
    for k, vals in draws.items():
        a = np.stack(vals)  # [n_boot, ...]
        fin = np.isfinite(a)
        with np.errstate(invalid="ignore"), _quiet():
            lo = np.nanpercentile(np.where(fin, a, np.nan), 50 * (1 - level), axis=0)
            hi = np.nanpercentile(np.where(fin, a, np.nan), 50 * (1 + level), axis=0)
        ok = fin.sum(0) >= n_boot / 2
        out[k] = np.stack([np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)], -1)
    return out


class _quiet:
    # nanpercentile warns on all-nan slices, which the `ok` mask already handles
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def decide(lo: float, hi: float, threshold: float, higher_is_claim: bool = True) -> str:
    """Rule V: the claim is "value > threshold" (or "< threshold"); the interval decides.

    Supported if the whole interval is on the claim's side of the threshold, not supported if
    the whole interval is on the other side, otherwise (or without an interval) inconclusive.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if not higher_is_claim:
        lo, hi, threshold = -hi, -lo, -threshold
    if lo > threshold:
        return SUPPORTED
    if hi <= threshold:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def _iv(ci: dict[str, np.ndarray] | None, key: str, *idx: int) -> tuple[float, float]:
    if ci is None or key not in ci:
        return (math.nan, math.nan)
    v = ci[key][idx]
    return float(v[0]), float(v[1])


def headline_verdicts(
    table: SweepTable, stats: dict[str, np.ndarray], ci: dict[str, np.ndarray] | None
) -> list[dict[str, Any]]:
    """Verdicts of the headline claim (rule H) and the stability claim (rule S) at d_max."""
    names, w = table.presets, len(table.widths) - 1
    dmax = int(table.widths[-1])
    out = []
    if {"sp", "sp_emb", "mup_lr"} <= set(names):
        p = names.index("sp_emb")
        gap_lo, gap_hi = _iv(ci, "gap", w)
        g_lo, g_hi = _iv(ci, "gap_closed", p, w)
        if decide(gap_lo, gap_hi, 0.0) != SUPPORTED:
            verdict = INCONCLUSIVE  # no resolved advantage of μP over SP to recover
        else:
            verdict = decide(g_lo, g_hi, MOST)
        out.append(
            {
                "claim": "sp_emb (embedding LR × m) recovers most of μP's advantage over SP",
                "rule": "H",
                "verdict": verdict,
                "evidence": {
                    "width": dmax,
                    "gap_closed": _num(stats["gap_closed"][p, w]),
                    "gap_closed_ci95": [_num(g_lo), _num(g_hi)],
                    "gap_sp_minus_mup_lr": _num(stats["gap"][w]),
                    "gap_ci95": [_num(gap_lo), _num(gap_hi)],
                },
            }
        )
    if {"sp", "sp_emb"} <= set(names) and "instability" in table.aux:
        d = stats["instability_diff"][w]
        lo, hi = _iv(ci, "instability_diff", w)
        out.append(
            {
                "claim": "sp_emb smooths out SP's training instabilities",
                "rule": "S",
                "verdict": decide(lo, hi, 0.0, higher_is_claim=False),
                "evidence": {
                    "width": dmax,
                    "instability_sp": _num(stats["instability"][names.index("sp"), w]),
                    "instability_sp_emb": _num(stats["instability"][names.index("sp_emb"), w]),
                    "difference": _num(float(d)),
                    "difference_ci95": [_num(lo), _num(hi)],
                },
            }
        )
    return out


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def compute_summary(table: SweepTable) -> dict[str, Any]:
    """Compute accounting per preset: FLOPs and measured seconds of the proxy sweep (every LR
    and seed at the smallest width) against a direct sweep (the same at the largest width)."""
    out: dict[str, Any] = {}
    for key in ("flops", "train_seconds"):
        if key not in table.aux:
            return {}
    fl, sec = table.aux["flops"], table.aux["train_seconds"]
    for p, name in enumerate(table.presets):
        proxy_f, direct_f = np.nansum(fl[p, 0]), np.nansum(fl[p, -1])
        proxy_s, direct_s = np.nansum(sec[p, 0]), np.nansum(sec[p, -1])
        out[name] = {
            "proxy_width": int(table.widths[0]),
            "direct_width": int(table.widths[-1]),
            "proxy_flops": float(proxy_f),
            "direct_flops": float(direct_f),
            "proxy_seconds": round(float(proxy_s), 2),
            "direct_seconds": round(float(direct_s), 2),
            "flops_ratio": float(direct_f / proxy_f) if proxy_f > 0 else None,
            "seconds_ratio": float(direct_s / proxy_s) if proxy_s > 0 else None,
            "sweep_flops": float(np.nansum(fl[p])),
            "sweep_seconds": round(float(np.nansum(sec[p])), 2),
        }
    return out


# ----------------------------------------------------------------------------------------------
# the weight-decay claim (rule W)


def weight_decay_stats(
    table: SweepTable, presets: Sequence[str], seed_idx: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """E and κ with WD off and on, and their differences, per preset (``[p]`` arrays).

    ``table`` holds both arms, labelled ``"<preset>"`` (off) and ``"<preset>|wd"`` (on).
    """
    m = compute_metrics(table, seed_idx)
    out = {k: np.full(len(presets), np.nan) for k in ("E_off", "E_on", "kappa_off", "kappa_on")}
    for i, p in enumerate(presets):
        off, on = m.get(p), m.get(f"{p}|wd")
        for arm, pm in (("off", off), ("on", on)):
            if pm is not None:
                out[f"E_{arm}"][i] = math.nan if pm.E is None else pm.E
                out[f"kappa_{arm}"][i] = math.nan if pm.kappa is None else pm.kappa
    out["dE"] = out["E_on"] - out["E_off"]
    out["dkappa"] = out["kappa_on"] - out["kappa_off"]
    return out


def weight_decay_verdict(
    presets: Sequence[str], stats: dict[str, np.ndarray], ci: dict[str, np.ndarray] | None
) -> dict[str, Any]:
    """Rule W: WD lowers E (better fits) and raises κ (less robust), per preset and overall."""
    per: dict[str, Any] = {}
    votes = []
    for i, p in enumerate(presets):
        e = decide(*_iv(ci, "dE", i), 0.0, higher_is_claim=False)
        k = decide(*_iv(ci, "dkappa", i), 0.0)
        if e == SUPPORTED and k == SUPPORTED:
            v = SUPPORTED
        elif NOT_SUPPORTED in (e, k):
            v = NOT_SUPPORTED
        else:
            v = INCONCLUSIVE
        votes.append(v)
        per[p] = {"E": e, "kappa": k, "verdict": v}
    n = len(presets)
    if votes.count(SUPPORTED) > n / 2:
        overall = SUPPORTED
    elif votes.count(NOT_SUPPORTED) > n / 2:
        overall = NOT_SUPPORTED
    else:
        overall = INCONCLUSIVE
    return {
        "claim": "weight decay improves the scaling-law fits (lower E) but hurts extrapolation "
        "robustness (higher κ) at fixed tokens per parameter",
        "rule": "W",
        "verdict": overall,
        "per_preset": per,
    }
