"""The claims of ``fused-mup transfer`` on planted sweep tables: gap closed, the verdict rules,
loss left, compute accounting, the weight-decay comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fused_mup.transfer.claims import (
    VERDICTS,
    claim_stats,
    compute_summary,
    headline_verdicts,
    per_seed,
    weight_decay_stats,
    weight_decay_verdict,
)
from fused_mup.transfer.metrics import SweepTable

WIDTHS = np.array([32.0, 64.0, 128.0])
LRS = 2.0 ** np.arange(-10, -3)
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = VERDICTS


def table(lstar: dict[str, list[float]], seeds: int = 1, noise: float = 0.0) -> SweepTable:
    """Parabolas in log2 lr with their vertex on the grid point 2^-7 and the planted L*(d)."""
    x = np.log2(LRS)
    names = list(lstar)
    loss = np.empty((len(names), len(WIDTHS), len(LRS), seeds))
    rng = np.random.default_rng(0)
    for p, name in enumerate(names):
        for w in range(len(WIDTHS)):
            curve = lstar[name][w] + 0.01 * (x + 7) ** 2
            loss[p, w] = curve[:, None] + noise * rng.standard_normal(seeds)[None, :]
    return SweepTable(names, WIDTHS.copy(), LRS.copy(), list(range(seeds)), loss)


def test_gap_closed_is_the_planted_share():
    t = table(
        {
            "sp": [3.0, 2.9, 2.8],
            "mup_lr": [3.0, 2.8, 2.6],
            "sp_emb": [3.0, 2.85, 2.65],  # closes 1/2 and 3/4 of the gap
            "mup": [3.0, 2.95, 2.9],
        }
    )
    s = claim_stats(t)
    assert s["L_star"][0].tolist() == pytest.approx([3.0, 2.9, 2.8])
    assert math.isnan(s["gap_closed"][2, 0])  # base width: no gap to close
    assert s["gap_closed"][2, 1:] == pytest.approx([0.5, 0.75])
    assert s["gap_closed"][1, 1:] == pytest.approx([1.0, 1.0])  # the reference itself
    assert s["gap"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    # full mup is worse than sp here (gap -0.05, -0.1), so the shares are negative
    assert s["gap_closed_vs_mup"][2, 1:] == pytest.approx([-1.0, -1.5])


@pytest.mark.parametrize(
    "shares, verdict",
    [
        ([2.62, 2.63, 2.61, 2.62], SUPPORTED),  # closes ~90% in every seed
        ([2.78, 2.77, 2.79, 2.78], NOT_SUPPORTED),  # ~10%
        ([2.62, 2.78, 2.62, 2.78], INCONCLUSIVE),  # 90% or 10% depending on the seed
    ],
    ids=["closes-90pct", "closes-10pct", "seed-dependent"],
)
def test_headline_verdict(shares, verdict):
    t = table({"sp": [3.0, 2.9, 2.8], "mup_lr": [3.0, 2.8, 2.6], "sp_emb": [3.0, 2.9, 2.7]}, 4)
    t.loss[2, -1] += np.array(shares)[None, :] - 2.7
    (v,) = headline_verdicts(t, per_seed(t, claim_stats))  # no instability: no rule S
    assert v["rule"] == "H" and v["verdict"] == verdict and v["n_seeds"] == 4
    g = v["evidence"]["gap_closed"]
    assert g["per_seed"] == pytest.approx([(2.8 - x) / 0.2 for x in shares])
    assert g["mean"] == pytest.approx((2.8 - np.mean(shares)) / 0.2)
    assert "n=4 seeds" in g["text"]
    # the same table cut to 2 seeds has no interval, so no verdict either way
    t2 = table({"sp": [3.0, 2.9, 2.8], "mup_lr": [3.0, 2.8, 2.6], "sp_emb": [3.0, 2.9, 2.7]}, 2)
    t2.loss[2, -1] += np.array(shares[:2])[None, :] - 2.7
    (v2,) = headline_verdicts(t2, per_seed(t2, claim_stats))
    assert v2["verdict"] == INCONCLUSIVE and v2["evidence"]["gap_closed"]["interval"] is None


def test_headline_needs_a_resolved_gap():
    t = table(
        {"sp": [3.0, 2.9, 2.8], "mup_lr": [3.0, 2.9, 2.8], "sp_emb": [3.0, 2.9, 2.7]}, 3, 0.01
    )
    (v,) = headline_verdicts(t, per_seed(t, claim_stats))
    assert v["verdict"] == INCONCLUSIVE  # μP has no advantage here to recover
    assert v["evidence"]["gap_sp_minus_mup_lr"]["verdict"] != SUPPORTED


def test_stability_verdict_and_loss_left():
    t = table({"sp": [3.0, 2.9, 2.8], "mup_lr": [3.0, 2.8, 2.6], "sp_emb": [3.0, 2.85, 2.65]}, 3)
    inst = np.zeros_like(t.loss)
    inst[0] = 0.2  # sp spiky everywhere
    inst[2] = 0.01
    inst[..., 1] += 0.01  # seed 1 a little worse
    t.aux["instability"] = inst
    s = claim_stats(t)
    assert s["instability"][:, -1] == pytest.approx([0.2 + 0.01 / 3, 0.01 / 3, 0.01 + 0.01 / 3])
    h, st = headline_verdicts(t, per_seed(t, claim_stats))
    assert st["rule"] == "S" and st["verdict"] == SUPPORTED
    d = st["evidence"]["instability_sp_emb_minus_sp"]
    assert d["per_seed"] == pytest.approx([-0.19] * 3) and d["n"] == 3
    # η* is 2^-7 at every width: transferring it loses nothing
    assert s["loss_left"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_loss_left_when_the_optimum_moves():
    t = table({"sp": [3.0, 2.9, 2.8]})
    t.loss[0, -1, :, 0] = 2.8 + 0.01 * (np.log2(LRS) + 9) ** 2  # η*(d_max) = 2^-9
    s = claim_stats(t)
    assert s["loss_left"][0] == pytest.approx(0.01 * 2**2)  # two octaves off


def test_compute_summary():
    t = table({"sp": [3.0, 2.9, 2.8]}, seeds=2)
    t.aux["flops"] = np.ones_like(t.loss) * (WIDTHS**2)[None, :, None, None]
    t.aux["train_seconds"] = np.ones_like(t.loss) * (WIDTHS / 32)[None, :, None, None]
    c = compute_summary(t)["sp"]
    n = len(LRS) * 2
    assert c["proxy_flops"] == n * 32**2 and c["direct_flops"] == n * 128**2
    assert c["flops_ratio"] == pytest.approx(16.0)
    assert c["seconds_ratio"] == pytest.approx(4.0)
    assert compute_summary(table({"sp": [3.0, 2.9, 2.8]})) == {}  # no aux: nothing to say


def test_weight_decay_rule():
    # "p|wd" has the same optimum at every width but its basin sharpens with width (κ up),
    # and the WD-off arm has scattered η* (E > 0): the claim holds by construction.
    x = np.log2(LRS)
    seeds = 3
    loss = np.empty((2, 3, len(LRS), seeds))
    rng = np.random.default_rng(1)
    shift = [0.0, 0.8, -0.5]
    for w in range(3):
        for s in range(seeds):
            jit = rng.normal(0, 0.02)
            loss[0, w, :, s] = 2.0 + 0.01 * (x + 7 + shift[w] + jit) ** 2
            loss[1, w, :, s] = 2.0 + 0.01 * 2.0**w * (x + 7 + jit) ** 2
    t = SweepTable(["sp", "sp|wd"], WIDTHS.copy(), LRS.copy(), list(range(seeds)), loss)
    st = weight_decay_stats(t, ["sp"])
    assert st["dE"][0] < 0 and st["dkappa"][0] == pytest.approx(1.0, abs=0.05)
    seeds_st = per_seed(t, lambda tt, i: weight_decay_stats(tt, ["sp"], i))
    assert seeds_st["dkappa"].shape == (1, seeds)
    v = weight_decay_verdict(["sp"], seeds_st)
    assert v["rule"] == "W" and v["verdict"] == SUPPORTED
    pp = v["per_preset"]["sp"]
    assert (pp["E"], pp["kappa"], pp["verdict"]) == (SUPPORTED, SUPPORTED, SUPPORTED)
    assert pp["dkappa"]["n"] == seeds
    # two seeds: no interval, no verdict
    two = {k: x[:, :2] for k, x in seeds_st.items()}
    assert weight_decay_verdict(["sp"], two)["verdict"] == INCONCLUSIVE
