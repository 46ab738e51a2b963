"""Rule V and the intervals over seeds (``fused_mup.transfer.stats``) on values where the
answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fused_mup.transfer.stats import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    decide,
    summarize,
    t_interval,
    t_quantile,
)


def test_t_interval_matches_the_textbook():
    # n = 3, mean 2, sd 1: half-width t(0.975, 2) * 1 / sqrt(3) = 4.303 / 1.732 = 2.484
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert (lo, hi) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert t_quantile(5) == pytest.approx(2.571) and t_quantile(100) == pytest.approx(2.042)
    # a nan seed is dropped; two finite values left: no interval
    assert np.isnan(t_interval(np.array([1.0, np.nan, 3.0]))).all()
    # per row of a 2-D array
    iv = t_interval(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert iv.shape == (2, 2) and iv[1].tolist() == [5.0, 5.0]


def test_summarize_gives_a_range_not_an_interval_below_three_seeds():
    s = summarize([1.14, 1.35])
    assert s["interval"] is None and s["range"] == [1.14, 1.35] and s["n"] == 2
    assert s["method"].startswith("no interval: 2 seeds")
    s3 = summarize([1.0, 2.0, 3.0])
    assert s3["interval"] is not None and s3["method"].startswith("95% Student-t")
    assert s3["per_seed"] == [1.0, 2.0, 3.0] and s3["mean"] == 2.0


@pytest.mark.parametrize(
    "values, verdict",
    [
        ([0.9, 0.95, 0.85, 0.92], SUPPORTED),  # every seed well above 0.5
        ([0.1, 0.15, 0.05, 0.12], NOT_SUPPORTED),  # every seed well below
        ([0.9, 0.1, 0.9, 0.1], INCONCLUSIVE),  # seeds on both sides
        ([0.6, 0.55, 2.5], INCONCLUSIVE),  # every seed above, but the interval reaches 0.5
        ([0.9, 0.95], INCONCLUSIVE),  # clear, but 2 seeds: no interval
    ],
    ids=["clear-yes", "clear-no", "split", "wide", "two-seeds"],
)
def test_rule_v(values, verdict):
    d = decide(values, 0.5)
    assert d["verdict"] == verdict
    assert f"n={len(values)} seeds" in d["text"]
    # the same claim written as "-value < -0.5"
    assert decide([-v for v in values], -0.5, higher_is_claim=False)["verdict"] == verdict


def test_rule_v_states_its_evidence():
    d = decide([0.9, 0.95, 0.85], 0.5)
    assert d["on_claim_side"] == 3 and d["n"] == 3
    assert "3/3 seeds > 0.5" in d["text"] and "excludes 0.5" in d["text"]
