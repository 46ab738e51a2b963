"""``fused_mup.transfer.metrics`` on planted sweep tables (known b, kappa, R_inf)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fused_mup.transfer.metrics import (
    SweepTable,
    bootstrap_metrics,
    compute_metrics,
    find_optimum,
    fit_power_law,
    fit_saturating,
    loss_at,
)

WIDTHS = np.array([32.0, 64.0, 128.0, 256.0, 512.0])
LRS = 2.0 ** np.arange(-18, -1.5, 0.5)


def planted(b: float, kappa: float, resid: np.ndarray | None = None, seeds: int = 1) -> SweepTable:
    """L(d, eta) = L0(d) + c0 (d/32)^kappa (ln eta - ln eta*(d))^2, eta* = 1e-3 (d/32)^b."""
    log_eta = math.log(1e-3) + b * np.log(WIDTHS / 32)
    if resid is not None:
        log_eta = log_eta + resid
    c = 0.05 * (WIDTHS / 32) ** kappa
    L0 = 2.0 + 0.5 * (WIDTHS / 32) ** -0.5
    x = np.log(LRS)
    loss = L0[:, None] + c[:, None] * (x[None, :] - log_eta[:, None]) ** 2
    loss = np.repeat(loss[None, :, :, None], seeds, axis=3)
    return SweepTable(["p"], WIDTHS.copy(), LRS.copy(), list(range(seeds)), loss)


def test_planted_power_law_gives_back_b_with_zero_E():
    m = compute_metrics(planted(b=-0.8, kappa=0.0))["p"]
    assert m.status == ["ok"] * 5
    assert m.b == pytest.approx(-0.8, abs=1e-9)
    assert m.E == pytest.approx(0.0, abs=1e-9)
    assert m.extrap_err == pytest.approx(0.0, abs=1e-9)
    assert m.extrap_penalty == pytest.approx(0.0, abs=1e-9)
    assert np.exp(m.log_eta_star) == pytest.approx(1e-3 * (WIDTHS / 32) ** -0.8, rel=1e-9)


def test_E_is_rms_residual_and_extrapolation_error():
    resid = np.array([0.1, -0.2, 0.05, 0.1, -0.05])
    m = compute_metrics(planted(b=-1.0, kappa=0.0, resid=resid))["p"]
    y = math.log(1e-3) - np.log(WIDTHS / 32) + resid
    bb, aa = np.polyfit(np.log(WIDTHS), y, 1)
    want = np.sqrt(np.mean((y - aa - bb * np.log(WIDTHS)) ** 2))
    assert m.b == pytest.approx(bb, abs=1e-9)
    assert m.E == pytest.approx(want, abs=1e-9)
    b4, a4 = np.polyfit(np.log(WIDTHS[:4]), y[:4], 1)
    assert m.extrap_err == pytest.approx(a4 + b4 * math.log(512) - y[4], abs=1e-9)
    # the measured penalty at d_max follows the planted parabola: c(d_max) * err^2
    assert m.extrap_penalty == pytest.approx(0.05 * m.extrap_err**2, rel=1e-6)


@pytest.mark.parametrize("kappa", [-0.5, 0.0, 0.7])
def test_planted_curvature_gives_back_kappa(kappa):
    m = compute_metrics(planted(b=-0.5, kappa=kappa))["p"]
    assert m.kappa == pytest.approx(kappa, abs=1e-9)
    assert m.c[0] == pytest.approx(0.05, rel=1e-9)


def test_R_inf_on_planted_gap():
    # Preset "q" is "p" shifted up by a planted relative gap R(d) = 0.02 + 0.3 (d/32)^-0.7 at
    # every LR; "p" transfers perfectly (b = 0), so R_p = 0 and R_q is the planted curve.
    base = planted(b=0.0, kappa=0.0)
    gap = 0.02 + 0.3 * (WIDTHS / 32) ** -0.7
    lq = base.loss[0] * (1 + gap)[:, None, None]
    sw = SweepTable(["p", "q"], WIDTHS, LRS, [0], np.stack([base.loss[0], lq]))
    ms = compute_metrics(sw)
    assert ms["p"].R_inf == pytest.approx(0.0, abs=1e-9)
    assert ms["q"].R == pytest.approx(gap.tolist(), rel=1e-9)
    assert ms["q"].R_inf == pytest.approx(0.02, abs=2e-3)
    assert ms["q"].R_fit["gamma"] == pytest.approx(0.7, abs=0.02)


def test_growing_penalty_has_no_R_inf():
    # R(d) = 0.1 log2(d/32): growing without bound, so no asymptote may be reported.
    base = planted(b=0.0, kappa=0.0)
    gap = 0.1 * np.log2(WIDTHS / 32) + 1e-3
    lq = base.loss[0] * (1 + gap)[:, None, None]
    ms = compute_metrics(SweepTable(["p", "q"], WIDTHS, LRS, [0], np.stack([base.loss[0], lq])))
    assert ms["q"].R_inf is None and isinstance(ms["q"].R_fit, dict)
    assert any("still growing" in n for n in ms["q"].notes)


def test_saturating_fit_reports_underdetermined():
    assert "underdetermined" in fit_saturating(np.array([32, 64, 128]), np.array([0.1, 0.05, 0.03]))
    assert fit_saturating(np.array([32, 64, 128, 256]), np.array([0.1, math.inf, 0, 0])) == (
        "diverged at the transferred LR"
    )
    assert fit_power_law(np.array([32.0, 64.0]), np.array([-5.0, -5.5])).E is None


def test_optimum_edges_and_divergence():
    x = np.log(2.0 ** np.arange(5))
    assert find_optimum(x, np.array([1.0, 2, 3, 4, 5])).status == "edge"
    assert find_optimum(x, np.array([3.0, 2, 1, math.inf, math.inf])).status == "edge"
    assert find_optimum(x, np.full(5, math.inf)).status == "none"
    o = find_optimum(x, np.array([3.0, 2, 1.5, 2, 3]))
    assert o.status == "ok" and o.log_eta == pytest.approx(x[2])
    y = np.array([3.0, 2, 1.5, 2, math.inf])
    o = find_optimum(x, y)
    assert loss_at(x, y, o, 0.5 * (x[3] + x[4])) == math.inf
    assert math.isnan(loss_at(x, y, o, x[-1] + 1))


def test_diverged_records_count_as_inf():
    recs = [
        {"key": {"preset": "sp", "width": 32, "lr": lr, "seed": 0}, "val_loss": v, "diverged": d}
        for lr, v, d in [(1e-3, 3.0, False), (2e-3, 2.5, False), (4e-3, None, True)]
    ]
    sw = SweepTable.from_records(recs)
    assert sw.loss[0, 0, :, 0].tolist() == [3.0, 2.5, math.inf]


def test_bootstrap_over_seeds():
    sw = planted(b=-1.0, kappa=0.0, seeds=3)
    rng = np.random.default_rng(0)
    sw.loss = sw.loss + rng.normal(0, 0.002, sw.loss.shape)
    ci = bootstrap_metrics(sw, n_boot=50)
    lo, hi = ci["p"]["b"]
    assert lo <= hi and lo < -0.9 and hi > -1.1
    assert bootstrap_metrics(planted(b=-1.0, kappa=0.0), n_boot=10) is None
