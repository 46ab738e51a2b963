"""Statistics over seeds for ``fused-mup transfer``: per-seed values, intervals, rule V.

One place says what an interval is. Every headline number is computed once per seed (a seed
fixes init and data order); the summary is the mean of those values, and the interval is a 95%
Student-t interval over them, given only when at least :data:`MIN_SEEDS` seeds have a value.
With fewer, the report shows the seed range, labelled as a range. Why t and not a bootstrap:
a percentile bootstrap over n seeds can only draw C(2n−1, n) seed multisets (3 for n = 2,
10 for n = 3), so its "95%" interval is about the range of the seeds, too narrow by a wide
margin; the t-interval widens by t(0.975, n−1) = 4.30 at n = 3, as it should. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "INCONCLUSIVE",
    "INTERVAL_METHOD",
    "MIN_SEEDS",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "VERDICTS",
    "decide",
    "per_seed",
    "summarize",
    "t_interval",
]

MIN_SEEDS = 3  # an interval from fewer seeds is not reported (docs/transfer.md)
INTERVAL_METHOD = "95% Student-t interval over per-seed values"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = (
    "supported",
    "not supported",
    "inconclusive at these widths/seeds",
)
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

# t(0.975, df) for df = 1 .. 30; beyond that df = 30's value (slightly wide, never narrow).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: int) -> float:
    """t(0.975, df), the two-sided 95% critical value of Student's t."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[min(df, len(_T975)) - 1]


def per_seed(
    table: Any, stat: Callable[[Any, np.ndarray | None], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``stat`` computed on each seed alone: ``{key: array[..., n_seeds]}``.

    ``table`` is a :class:`fused_mup.transfer.metrics.SweepTable`; ``stat(table, seed_idx)``
    returns arrays, e.g. :func:`fused_mup.transfer.claims.claim_stats`.
    """
    vals: dict[str, list[np.ndarray]] = {}
    for s in range(len(table.seeds)):
        for k, v in stat(table, np.array([s])).items():
            vals.setdefault(k, []).append(np.asarray(v, float))
    return {k: np.stack(v, -1) for k, v in vals.items()}


def t_interval(values: np.ndarray) -> np.ndarray:
    """95% t-interval of the mean over the last axis (finite values only): ``array[..., 2]``,
    nan where fewer than :data:`MIN_SEEDS` values are finite."""
    v = np.asarray(values, float)
    fin = np.isfinite(v)
    n = fin.sum(-1)
    x = np.where(fin, v, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(-1) / n
        var = (np.where(fin, v - mean[..., None], 0.0) ** 2).sum(-1) / (n - 1)
        t = np.vectorize(lambda k: t_quantile(int(k) - 1) if k >= 2 else math.nan, otypes=[float])(
            n
        )
        half = t * np.sqrt(var / n)
    ok = n >= MIN_SEEDS
    lo = np.where(ok, mean - half, np.nan)
    hi = np.where(ok, mean + half, np.nan)
    return np.stack([lo, hi], -1)


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def summarize(values: np.ndarray | list[float]) -> dict[str, Any]:
    """One quantity over seeds, in the form ``metrics.json`` uses.

    Returns ``{"mean", "per_seed", "n", "range", "interval", "method"}``: the mean and range of
    the finite per-seed values, and the t-interval (``interval`` None and ``method`` saying
    why when fewer than :data:`MIN_SEEDS` seeds have a value).
    """
    v = np.asarray(values, float).ravel()
    f = v[np.isfinite(v)]
    n = int(f.size)
    iv = t_interval(v)
    has = n >= MIN_SEEDS
    return {
        "mean": _num(f.mean()) if n else None,
        "per_seed": [_num(x) for x in v],
        "n": n,
        "range": [_num(f.min()), _num(f.max())] if n else None,
        "interval": [_num(iv[0]), _num(iv[1])] if has else None,
        "method": INTERVAL_METHOD
        if has
        else f"no interval: {n} seed{'s' if n != 1 else ''} (< {MIN_SEEDS})",
    }


def decide(
    values: np.ndarray | list[float], threshold: float, higher_is_claim: bool = True
) -> dict[str, Any]:
    """Rule V: is the claim "value > threshold" (or "< threshold") true of these seeds?

    - supported: at least :data:`MIN_SEEDS` seeds have a value, every one of them is on the
      claim's side of the threshold, and the 95% t-interval of their mean excludes it;
    - not supported: the same on the other side;
    - inconclusive otherwise (seeds on both sides, an interval that straddles, or too few
      seeds).

    Returns ``{"verdict", "n", "on_claim_side", "mean", "interval", "per_seed", "text"}``;
    ``text`` states the evidence and n.
    """
    s = summarize(values)
    v = np.asarray(values, float).ravel()
    f = v[np.isfinite(v)]
    sign = 1.0 if higher_is_claim else -1.0
    rel = ">" if higher_is_claim else "<"
    side = int((sign * (f - threshold) > 0).sum())
    other = int((sign * (f - threshold) <= 0).sum())
    n = s["n"]
    verdict = INCONCLUSIVE
    if s["interval"] is not None:
        lo, hi = (sign * x for x in s["interval"])
        lo, hi = min(lo, hi), max(lo, hi)
        if side == n and lo > sign * threshold:
            verdict = SUPPORTED
        elif other == n and hi <= sign * threshold:
            verdict = NOT_SUPPORTED
    seeds = ", ".join("–" if x is None else f"{x:.3g}" for x in s["per_seed"])
    if s["interval"] is None:
        iv = f"no interval (n={n} seeds < {MIN_SEEDS})"
    else:
        lo, hi = s["interval"]
        excl = "excludes" if not lo <= threshold <= hi else "contains"
        iv = f"95% t-interval [{lo:.3g}, {hi:.3g}] {excl} {threshold:g}"
    text = (
        f"{side}/{n} seeds {rel} {threshold:g} (per seed: {seeds}); mean "
        + ("–" if s["mean"] is None else f"{s['mean']:.3g}")
        + f"; {iv}; n={n} seeds"
    )
    return {
        "verdict": verdict,
        "n": n,
        "on_claim_side": side,
        "threshold": threshold,
        "mean": s["mean"],
        "interval": s["interval"],
        "per_seed": s["per_seed"],
        "text": text,
    }
