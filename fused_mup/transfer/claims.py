"""The paper's claims, computed from a sweep table: gap closed, stability, weight decay, compute.

Definitions and the verdict rules are written out in ``docs/transfer.md`` ("Claims and
verdicts"); each function here names the rule it implements. numpy only.

A verdict is one of :data:`VERDICTS`, decided by rule V
(:func:`fused_mup.transfer.stats.decide`) on per-seed values: each claim's quantity is
computed on every seed alone (:func:`fused_mup.transfer.stats.per_seed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fused_mup.transfer.metrics import (
    SweepTable,
    compute_metrics,
    find_optimum,
    loss_at,
)
from fused_mup.transfer.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    VERDICTS,
    decide,
    per_seed,
)

__all__ = [
    "MOST",
    "VERDICTS",
    "claim_stats",
    "compute_summary",
    "headline_verdicts",
    "per_seed",
    "weight_decay_stats",
    "weight_decay_verdict",
]

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
        ``log2_eta_star``: log2 η*(d), the vertex of the parabola through the best grid LR
            and its neighbours (nan where the optimum is at the grid edge: only a bound).
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
    eta = np.array(
        [[o.log_eta / math.log(2) if o.status == "ok" else np.nan for o in row] for row in opts]
    )
    out: dict[str, np.ndarray] = {"log2_eta_star": eta, "L_star": L, "best_index": best}
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


def headline_verdicts(table: SweepTable, seeds: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Verdicts of the headline claim (rule H) and the stability claim (rule S) at d_max.

    ``seeds`` is :func:`per_seed` of :func:`claim_stats`. Rule H: μP's advantage must be
    resolved (rule V on the per-seed gap L*_sp − L*_mup_lr > 0), then rule V on sp_emb's
    per-seed gap share > :data:`MOST`. Rule S: rule V on the per-seed instability difference
    sp_emb − sp < 0.
    """
    names, w = table.presets, len(table.widths) - 1
    dmax = int(table.widths[-1])
    out = []
    if {"sp", "sp_emb", "mup_lr"} <= set(names):
        p = names.index("sp_emb")
        gap = decide(seeds["gap"][w], 0.0)
        share = decide(seeds["gap_closed"][p, w], MOST)
        if gap["verdict"] != SUPPORTED:
            verdict = INCONCLUSIVE  # no resolved advantage of μP over SP to recover
        else:
            verdict = share["verdict"]
        out.append(
            {
                "claim": "sp_emb (embedding LR × m) recovers most of μP's advantage over SP",
                "rule": "H",
                "verdict": verdict,
                "n_seeds": share["n"],
                "evidence": {"width": dmax, "gap_closed": share, "gap_sp_minus_mup_lr": gap},
            }
        )
    if {"sp", "sp_emb"} <= set(names) and "instability" in table.aux:
        diff = decide(seeds["instability_diff"][w], 0.0, higher_is_claim=False)
        out.append(
            {
                "claim": "sp_emb smooths out SP's training instabilities",
                "rule": "S",
                "verdict": diff["verdict"],
                "n_seeds": diff["n"],
                "evidence": {"width": dmax, "instability_sp_emb_minus_sp": diff},
            }
        )
    return out


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


def weight_decay_verdict(presets: Sequence[str], seeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Rule W: WD lowers E (better fits) and raises κ (less robust), per preset and overall.

    ``seeds`` holds per-seed :func:`weight_decay_stats` (``[p, n_seeds]``); the two arms of a
    seed share init and data order, so ΔE and Δκ are paired differences. Rule V on each.
    """
    per: dict[str, Any] = {}
    votes = []
    for i, p in enumerate(presets):
        e = decide(seeds["dE"][i], 0.0, higher_is_claim=False)
        k = decide(seeds["dkappa"][i], 0.0)
        if e["verdict"] == SUPPORTED and k["verdict"] == SUPPORTED:
            v = SUPPORTED
        elif NOT_SUPPORTED in (e["verdict"], k["verdict"]):
            v = NOT_SUPPORTED
        else:
            v = INCONCLUSIVE
        votes.append(v)
        per[p] = {"E": e["verdict"], "kappa": k["verdict"], "verdict": v, "dE": e, "dkappa": k}
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
