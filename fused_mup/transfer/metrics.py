"""Transfer metrics E, kappa and R_inf on a width x LR sweep table (numpy only).

The exact definitions are in ``docs/transfer.md``; every function here cites the step it
implements. Conventions: ``log`` is the natural log; a diverged run has loss ``+inf``; a run
that is missing from the table has loss ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fused_mup.transfer.stats import MIN_SEEDS

__all__ = [
    "AUX",
    "Optimum",
    "SweepTable",
    "bootstrap_metrics",
    "compute_metrics",
    "curvature",
    "fit_power_law",
    "fit_saturating",
    "find_optimum",
    "loss_at",
    "preset_metrics",
    "replicates",
]

DELTA_MAX = math.log(4.0)  # half-width of the window used for the quadratic-curvature fit


# ----------------------------------------------------------------------------------------------
# the table


#: Per-run numbers carried beside the loss (``SweepTable.aux``), when the records have them.
AUX = ("instability", "flops", "train_seconds", "seconds")


@dataclass
class SweepTable:
    """A sweep table: ``loss[p, w, l, s]`` for presets x widths x LRs x seeds.

    ``+inf`` marks a diverged run and ``nan`` a run that is not in the table. ``aux`` holds
    other per-run numbers (:data:`AUX`) in the same layout (nan where absent).
    """

    presets: list[str]
    widths: np.ndarray
    lrs: np.ndarray
    seeds: list[int]
    loss: np.ndarray
    aux: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        label: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> SweepTable:
        """Build from results-file records (``preset, width, lr, seed, val_loss, diverged``).

        Records may be flat or carry the config under ``"key"``. ``label(key)`` names the
        "preset" axis entry of a run (default: ``key["preset"]``), so that one table can hold
        the arms of an experiment, e.g. ``"sp|wd"``.
        """
        rows = []
        for r in records:
            k = r.get("key", r)
            bad = r.get("diverged") or r.get("val_loss") is None
            loss = math.inf if bad else float(r["val_loss"])
            aux = tuple(math.nan if r.get(a) is None else float(r[a]) for a in AUX)
            name = k["preset"] if label is None else label(k)
            rows.append((name, int(k["width"]), float(k["lr"]), int(k["seed"]), loss, aux))
        if not rows:
            raise ValueError("empty sweep table")
        presets = list(dict.fromkeys(r[0] for r in rows))
        widths = np.array(sorted({r[1] for r in rows}), dtype=float)
        lrs = np.array(sorted({r[2] for r in rows}), dtype=float)
        seeds = sorted({r[3] for r in rows})
        shape = (len(presets), len(widths), len(lrs), len(seeds))
        loss = np.full(shape, np.nan)
        aux_arr = {a: np.full(shape, np.nan) for a in AUX}
        for p, w, lr, s, v, aux in rows:
            i = (
                presets.index(p),
                int(np.searchsorted(widths, w)),
                int(np.searchsorted(lrs, lr)),
                seeds.index(s),
            )
            loss[i] = v
            for a, x in zip(AUX, aux, strict=True):
                aux_arr[a][i] = x
        aux_arr = {a: x for a, x in aux_arr.items() if not np.isnan(x).all()}
        return cls(presets, widths, lrs, seeds, loss, aux_arr)

    def mean_loss(self, seed_idx: np.ndarray | None = None) -> np.ndarray:
        """Seed-mean loss ``[p, w, l]``: inf if any seed diverged, nan if none ran."""
        x = self.loss if seed_idx is None else self.loss[..., seed_idx]
        with np.errstate(invalid="ignore"):
            div = np.isinf(x).any(-1)
            cnt = np.isfinite(x).sum(-1)
            m = np.where(cnt > 0, np.nansum(np.where(np.isfinite(x), x, 0.0), -1) / cnt, np.nan)
        return np.where(div, np.inf, m)


# ----------------------------------------------------------------------------------------------
# step 1: eta* per width


@dataclass
class Optimum:
    """The optimum of one loss-vs-LR curve.

    Attributes:
        log_eta: log eta* (natural log).
        loss: L* (the parabola's minimum, or the grid minimum when no parabola applies).
        status: "ok" (interior parabola), "edge" (best grid LR is the first/last finite one, so
            eta* is only a bound), "flat" (parabola not convex), "none" (no finite loss).
        index: index of the best grid point.
    """

    log_eta: float
    loss: float
    status: str
    index: int = -1
    coef: tuple[float, float, float] | None = None  # parabola in log eta (np.polyfit order)


def find_optimum(log_lrs: np.ndarray, losses: np.ndarray) -> Optimum:
    """eta* of one curve: the vertex of the parabola in log eta through the best grid point and
    its two neighbours (clamped to their span). Diverged (inf) or missing (nan) neighbours make
    the optimum an "edge"."""
    x, y = np.asarray(log_lrs, float), np.asarray(losses, float)
    fin = np.isfinite(y)
    if not fin.any():
        return Optimum(math.nan, math.nan, "none")
    i = int(np.nanargmin(np.where(fin, y, np.nan)))
    if i == 0 or i == len(y) - 1 or not (fin[i - 1] and fin[i + 1]):
        return Optimum(float(x[i]), float(y[i]), "edge", i)
    c = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    if c[0] <= 0:
        return Optimum(float(x[i]), float(y[i]), "flat", i)
    xv = float(np.clip(-c[1] / (2 * c[0]), x[i - 1], x[i + 1]))
    return Optimum(xv, float(np.polyval(c, xv)), "ok", i, (float(c[0]), float(c[1]), float(c[2])))


def loss_at(log_lrs: np.ndarray, losses: np.ndarray, opt: Optimum, log_eta: float) -> float:
    """Loss of a curve at an off-grid LR: the optimum's parabola inside its 3-point window,
    else linear interpolation in log eta. inf if the bracket touches a diverged run, nan if
    ``log_eta`` is outside the grid's finite span."""
    x, y = np.asarray(log_lrs, float), np.asarray(losses, float)
    if opt.coef is not None and x[opt.index - 1] <= log_eta <= x[opt.index + 1]:
        return float(np.polyval(opt.coef, log_eta))
    ok = ~np.isnan(y)
    x, y = x[ok], y[ok]
    if len(x) == 0 or log_eta < x[0] - 1e-9 or log_eta > x[-1] + 1e-9:
        return math.nan
    j = int(np.clip(np.searchsorted(x, log_eta), 1, len(x) - 1))
    if not (np.isfinite(y[j - 1]) and np.isfinite(y[j])):
        near = j - 1 if abs(log_eta - x[j - 1]) < 1e-9 else j if abs(log_eta - x[j]) < 1e-9 else -1
        return float(y[near]) if near >= 0 else math.inf
    t = (log_eta - x[j - 1]) / (x[j] - x[j - 1])
    return float((1 - t) * y[j - 1] + t * y[j])


# ----------------------------------------------------------------------------------------------
# step 2: E, the power-law fit of eta*(d)


@dataclass
class PowerLawFit:
    """log eta*(d) = a + b log d by least squares. E is the RMS residual (None if n < 3)."""

    a: float
    b: float
    E: float | None
    n: int


def fit_power_law(widths: np.ndarray, log_etas: np.ndarray) -> PowerLawFit | None:
    """Fit log eta* = a + b log d on the finite points; None if fewer than 2."""
    w, y = np.asarray(widths, float), np.asarray(log_etas, float)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return None
    lw, y = np.log(w[ok]), y[ok]
    b, a = np.polyfit(lw, y, 1)
    res = y - (a + b * lw)
    E = float(np.sqrt(np.mean(res**2))) if len(y) >= 3 else None
    return PowerLawFit(float(a), float(b), E, int(len(y)))


# ----------------------------------------------------------------------------------------------
# step 3: kappa, curvature of the basin vs width


def curvature(
    log_lrs: np.ndarray, losses: np.ndarray, opt: Optimum, delta_max: float = DELTA_MAX
) -> float:
    """c in Delta L ~ c * delta^2 (least squares through the origin), delta = log(eta/eta*),
    over the finite grid points with 0 < |delta| <= delta_max. nan if fewer than 2 points."""
    if opt.status == "none":
        return math.nan
    d = np.asarray(log_lrs, float) - opt.log_eta
    dl = np.asarray(losses, float) - opt.loss
    ok = np.isfinite(dl) & (np.abs(d) <= delta_max + 1e-9) & (np.abs(d) > 1e-12)
    if ok.sum() < 2:
        return math.nan
    return float(np.sum(dl[ok] * d[ok] ** 2) / np.sum(d[ok] ** 4))


# ----------------------------------------------------------------------------------------------
# step 4: R_inf


@dataclass
class SaturatingFit:
    """R(d) = R_inf + A * d^-gamma (gamma on a grid, (R_inf, A) by linear least squares)."""

    R_inf: float
    A: float
    gamma: float
    rms: float
    n: int
    gamma_at_bound: bool


def fit_saturating(
    widths: np.ndarray,
    R: np.ndarray,
    gammas: np.ndarray | None = None,
) -> SaturatingFit | str:
    """Fit R(d) = R_inf + A d^-gamma. Returns the reason as a string when the fit is not
    determined: it needs >= 4 finite points (3 parameters plus one degree of freedom)."""
    w, r = np.asarray(widths, float), np.asarray(R, float)
    if np.isinf(r).any():
        return "diverged at the transferred LR"
    ok = np.isfinite(r)
    if ok.sum() < 4:
        return f"underdetermined: {int(ok.sum())} widths, needs >= 4"
    w, r = w[ok], r[ok]
    gammas = np.linspace(0.05, 3.0, 296) if gammas is None else gammas
    best: tuple[float, float, float, float] | None = None
    for g in gammas:
        X = np.stack([np.ones_like(w), (w / w[0]) ** -g], 1)  # normalized for conditioning
        coef, *_ = np.linalg.lstsq(X, r, rcond=None)
        sse = float(np.sum((X @ coef - r) ** 2))
        if best is None or sse < best[0] - 1e-15:
            best = (sse, float(coef[0]), float(coef[1]) * w[0] ** g, float(g))
    assert best is not None
    sse, r_inf, A, g = best
    return SaturatingFit(
        r_inf, A, g, math.sqrt(sse / len(w)), int(len(w)), bool(g in (gammas[0], gammas[-1]))
    )


# ----------------------------------------------------------------------------------------------
# all metrics


@dataclass
class PresetMetrics:
    """Every metric of one preset (see docs/transfer.md for the definitions)."""

    preset: str
    widths: list[float]
    log_eta_star: list[float]
    loss_star: list[float]
    status: list[str]
    b: float | None = None
    a: float | None = None
    E: float | None = None
    extrap_err: float | None = None  # log eta_hat(d_max) - log eta*(d_max), fit on d < d_max
    eta_hat_max: float | None = None
    c: list[float] = field(default_factory=list)
    kappa: float | None = None
    extrap_penalty: float | None = None  # L(d_max, eta_hat) - L*(d_max)
    extrap_penalty_quad: float | None = None  # c(d_max) * delta_hat^2
    eta_transfer: float | None = None  # eta*(d_min)
    R: list[float] = field(default_factory=list)
    R_inf: float | None = None
    R_fit: dict[str, Any] | str | None = None
    R_fitlr: list[float] = field(default_factory=list)
    R_inf_fitlr: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form."""
        return asdict(self)


def _f(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def preset_metrics(
    sweep: SweepTable,
    mean: np.ndarray,
    p: int,
    best_loss: np.ndarray,
    include_edge: bool = False,
) -> PresetMetrics:
    """All metrics of preset ``p`` given the seed-mean table and the per-width best loss over
    all presets (``best_loss[w]``)."""
    x = np.log(sweep.lrs)
    W = sweep.widths
    opts = [find_optimum(x, mean[p, w]) for w in range(len(W))]
    usable = np.array([o.status == "ok" or (include_edge and o.status == "edge") for o in opts])
    m = PresetMetrics(
        sweep.presets[p],
        W.tolist(),
        [o.log_eta for o in opts],
        [o.loss for o in opts],
        [o.status for o in opts],
    )
    if (~usable).any():
        bad = [f"d={int(W[i])}:{opts[i].status}" for i in np.where(~usable)[0]]
        m.notes.append("optimum excluded from the fits (" + ", ".join(bad) + ")")
    y = np.array([o.log_eta if u else math.nan for o, u in zip(opts, usable, strict=True)])

    fit = fit_power_law(W, y)
    if fit is not None:
        m.a, m.b, m.E = fit.a, fit.b, fit.E
    # leave-largest-out extrapolation (needs the largest width usable and >= 2 smaller)
    dm = len(W) - 1
    fit_small = fit_power_law(W[:dm], y[:dm]) if usable[dm] else None
    delta_hat = math.nan
    if fit_small is not None:
        pred = fit_small.a + fit_small.b * math.log(W[dm])
        m.extrap_err = pred - y[dm]
        m.eta_hat_max = math.exp(pred)
        delta_hat = pred - y[dm]
        m.extrap_penalty = _f(loss_at(x, mean[p, dm], opts[dm], pred) - opts[dm].loss)
        if m.extrap_penalty is None and math.isinf(loss_at(x, mean[p, dm], opts[dm], pred)):
            m.notes.append("extrapolated LR lands next to a diverged run at d_max")

    c = np.array(
        [
            curvature(x, mean[p, w], o) if u else math.nan
            for w, (o, u) in enumerate(zip(opts, usable, strict=True))
        ]
    )
    m.c = [_f(v) for v in c]
    okc = np.isfinite(c) & (c > 0)
    if okc.sum() >= 2:
        m.kappa = float(np.polyfit(np.log(W[okc]), np.log(c[okc]), 1)[0])
    if math.isfinite(delta_hat) and okc[dm]:
        m.extrap_penalty_quad = float(c[dm] * delta_hat**2)

    # R: transferred LR = eta*(d_min), used unchanged at every width
    if opts[0].status != "none":
        lt = opts[0].log_eta
        m.eta_transfer = math.exp(lt)
        LT = np.array([loss_at(x, mean[p, w], opts[w], lt) for w in range(len(W))])
        R = LT / best_loss - 1.0
        m.R = [float(v) if not np.isnan(v) else None for v in R]
        sf = fit_saturating(W, R)
        m.R_fit = sf if isinstance(sf, str) else asdict(sf)
        m.R_inf = _r_inf(sf)
        if m.R_inf is None and not isinstance(sf, str):
            m.notes.append(
                "R(d) is still growing at the largest width (gamma at the lower grid bound): "
                "R_inf is not determined by these widths (the raw fit is in R_fit)"
            )
    # R with the LR taken from this preset's own power-law fit (in-sample)
    if fit is not None:
        LF = np.array(
            [loss_at(x, mean[p, w], opts[w], fit.a + fit.b * math.log(W[w])) for w in range(len(W))]
        )
        RF = LF / best_loss - 1.0
        m.R_fitlr = [float(v) if not np.isnan(v) else None for v in RF]
        m.R_inf_fitlr = _r_inf(fit_saturating(W, RF))
    return m


def _r_inf(sf: SaturatingFit | str) -> float | None:
    # A fit that wants gamma -> 0 with A < 0 is R growing like log d: no asymptote to report.
    if isinstance(sf, str) or (sf.gamma_at_bound and sf.gamma < 0.5 and sf.A < 0):
        return None
    return sf.R_inf


def compute_metrics(
    sweep: SweepTable, seed_idx: np.ndarray | None = None
) -> dict[str, PresetMetrics]:
    """Metrics for every preset in the sweep (on the seed mean, or a seed resample)."""
    mean = sweep.mean_loss(seed_idx)
    x = np.log(sweep.lrs)
    # L_best(d): the lowest L* over all presets at width d
    stars = np.array(
        [
            [find_optimum(x, mean[p, w]).loss for w in range(len(sweep.widths))]
            for p in range(len(sweep.presets))
        ]
    )
    best = np.nanmin(np.where(np.isfinite(stars), stars, np.nan), axis=0) if stars.size else stars
    return {name: preset_metrics(sweep, mean, p, best) for p, name in enumerate(sweep.presets)}


SCALARS = ("b", "E", "extrap_err", "kappa", "extrap_penalty", "R_inf", "R_inf_fitlr")


def replicates(n_boot: int, desc: str, progress: bool) -> Iterable[int]:
    """``range(n_boot)``, with a tqdm bar when ``progress`` and tqdm is installed."""
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return range(n_boot)
        return tqdm(range(n_boot), desc=desc, unit="replicate", leave=False)
    return range(n_boot)


def bootstrap_metrics(
    sweep: SweepTable,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = False,
) -> dict[str, dict[str, tuple[float, float] | None]] | None:
    """Percentile bootstrap intervals over seeds for the scalar metrics and log eta*(d).

    Each replicate draws ``len(seeds)`` seeds with replacement (the same draw for every cell,
    since a seed fixes both init and data order) and recomputes everything. These metrics are
    fits over the seed-mean table (a single seed's fit is often undefined), so they get a
    bootstrap rather than the per-seed t-interval of the claims. None with fewer than
    ``MIN_SEEDS`` (3) seeds: below that the draws are a handful of seed multisets.
    """
    S = len(sweep.seeds)
    if S < MIN_SEEDS:
        return None
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {p: {} for p in sweep.presets}
    for _ in replicates(n_boot, "bootstrap: metrics", progress):
        idx = rng.integers(0, S, S)
        for p, m in compute_metrics(sweep, idx).items():
            for k in SCALARS:
                v = getattr(m, k)
                draws[p].setdefault(k, []).append(math.nan if v is None else v)
            for w, v in zip(m.widths, m.log_eta_star, strict=True):
                draws[p].setdefault(f"log_eta_star@{int(w)}", []).append(v)
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    out: dict[str, dict[str, tuple[float, float] | None]] = {}
    for p, d in draws.items():
        out[p] = {}
        for k, vals in d.items():
            v = np.asarray(vals, float)
            v = v[np.isfinite(v)]
            # an interval from fewer than half the replicates would be misleading
            out[p][k] = (
                (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
                if len(v) >= n_boot // 2
                else None
            )
    return out
