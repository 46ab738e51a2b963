"""Tests for ``fused-mup transfer``: metrics on planted tables, resume, a tiny real sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fused_mup import transfer
from fused_mup.transfer import SweepSpec, load_results, main, run_key_id, run_sweep
from fused_mup.transfer_metrics import (
    Sweep,
    bootstrap_metrics,
    compute_metrics,
    find_optimum,
    fit_power_law,
    fit_saturating,
    loss_at,
)
from fused_mup.transfer_model import load_corpus

WIDTHS = np.array([32.0, 64.0, 128.0, 256.0, 512.0])
LRS = 2.0 ** np.arange(-18, -1.5, 0.5)


def planted(b: float, kappa: float, resid: np.ndarray | None = None, seeds: int = 1) -> Sweep:
    """L(d, eta) = L0(d) + c0 (d/32)^kappa (ln eta - ln eta*(d))^2, eta* = 1e-3 (d/32)^b."""
    log_eta = math.log(1e-3) + b * np.log(WIDTHS / 32)
    if resid is not None:
        log_eta = log_eta + resid
    c = 0.05 * (WIDTHS / 32) ** kappa
    L0 = 2.0 + 0.5 * (WIDTHS / 32) ** -0.5
    x = np.log(LRS)
    loss = L0[:, None] + c[:, None] * (x[None, :] - log_eta[:, None]) ** 2
    loss = np.repeat(loss[None, :, :, None], seeds, axis=3)
    return Sweep(["p"], WIDTHS.copy(), LRS.copy(), list(range(seeds)), loss)


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
    sw = Sweep(["p", "q"], WIDTHS, LRS, [0], np.stack([base.loss[0], lq]))
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
    ms = compute_metrics(Sweep(["p", "q"], WIDTHS, LRS, [0], np.stack([base.loss[0], lq])))
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
    sw = Sweep.from_records(recs)
    assert sw.loss[0, 0, :, 0].tolist() == [3.0, 2.5, math.inf]


def test_bootstrap_over_seeds():
    sw = planted(b=-1.0, kappa=0.0, seeds=3)
    rng = np.random.default_rng(0)
    sw.loss = sw.loss + rng.normal(0, 0.002, sw.loss.shape)
    ci = bootstrap_metrics(sw, n_boot=50)
    lo, hi = ci["p"]["b"]
    assert lo <= hi and lo < -0.9 and hi > -1.1
    assert bootstrap_metrics(planted(b=-1.0, kappa=0.0), n_boot=10) is None


# ----------------------------------------------------------------------------------------------
# real (tiny) runs


def tiny_spec(**kw) -> SweepSpec:
    base = dict(
        presets=("sp", "mup"),
        widths=(16, 32),
        lrs=(2.0**-7, 2.0**-5),
        depth=1,
        heads=2,
        context=16,
        batch=4,
        base_width=16,
        tokens=4 * 16 * 4,
        eval_batches=2,
        max_bytes=300_000,
        device="cpu",
        name="tiny",
    )
    base.update(kw)
    return SweepSpec(**base)


def test_corpus_is_deterministic_and_split():
    a = load_corpus(max_bytes=300_000)
    assert len(a.train) > 5 * len(a.val) > 0
    transfer_model = pytest.importorskip("fused_mup.transfer_model")
    transfer_model._CORPUS_CACHE.clear()
    assert load_corpus(max_bytes=300_000).fingerprint == a.fingerprint


def test_resume_after_interruption(tmp_path, monkeypatch):
    spec = tiny_spec()
    n_all = len(spec.runs())
    calls = []
    real = transfer.train_run

    def interrupted(cfg, threads=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cfg)
        return real(cfg, threads=threads)

    monkeypatch.setattr(transfer, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert len(load_results(tmp_path)) == 3
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"id": "torn line from a kill')  # a crash mid-write
    calls.clear()
    monkeypatch.setattr(
        transfer, "train_run", lambda cfg, threads=None: (calls.append(cfg), real(cfg))[1]
    )
    recs = run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert len(calls) == n_all - 3
    assert len(recs) == n_all
    ids = [r["id"] for r in load_results(tmp_path)]
    assert sorted(ids) == sorted({run_key_id(c.key()) for c in spec.runs()})
    calls.clear()
    run_sweep(spec, tmp_path, jobs=1, progress=False)  # nothing left to do
    assert calls == []


def test_diverged_run_is_recorded(tmp_path):
    spec = tiny_spec(presets=("sp",), widths=(16,), lrs=(30.0,))
    (rec,) = run_sweep(spec, tmp_path, jobs=1, progress=False)
    assert rec["diverged"] is True
    assert json.loads((tmp_path / "results.jsonl").read_text())["diverged"] is True


def test_end_to_end_cli(tmp_path):
    argv = [
        "--widths", "16,32,64", "--lr-range=-9,-5", "--presets", "sp,mup", "--seeds", "0,1",
        "--depth", "1", "--heads", "2", "--context", "16", "--batch", "4", "--base-width", "16",
        "--tokens", "1024", "--max-bytes", "300000", "--device", "cpu", "--jobs", "1",
        "--bootstrap", "20", "--no-progress", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(argv) == 0
    assert len(load_results(tmp_path)) == 2 * 3 * 5 * 2
    report = (tmp_path / "report.md").read_text()
    assert "## sp" in report and "## mup" in report and "95% CI" in report
    assert "Wall time of the sweep" in report
    assert (tmp_path / "transfer.png").stat().st_size > 0
    assert (tmp_path / "eta_star.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["presets"]) == {"sp", "mup"}
    assert main(["--report-only", "--out", str(tmp_path), "--no-plots"]) == 0


def test_cli_parsing():
    a = transfer.build_parser().parse_args(
        ["--quick", "--lrs", "2**-10,1e-3", "--tokens-per-param", "2", "--weight-decay", "0.1"]
    )
    spec = transfer.spec_from_args(a)
    assert spec.lrs == (2.0**-10, 1e-3) and spec.name == "quick"
    assert spec.tokens is None and spec.steps_for(64) > spec.steps_for(32)
    assert spec.weight_decay == 0.1
    with pytest.raises(SystemExit):
        transfer.spec_from_args(transfer.build_parser().parse_args(["--presets", "nope"]))


@pytest.mark.slow
def test_process_pool(tmp_path):
    recs = run_sweep(tiny_spec(), tmp_path, jobs=2, progress=False)
    assert len(recs) == 8 and all(r["val_loss"] or r["diverged"] for r in recs)
