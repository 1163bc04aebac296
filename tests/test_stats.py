"""Statistics against references: scikit-learn for AUC, R's pROC for DeLong intervals and paired tests, textbook values for Wilson and Holm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from core.results.stats import (at_threshold, auc_delong, calibration, delong_paired, holm, roc_band, threshold_for_sensitivity,
                        threshold_youden, wilson)

FIXTURES = Path(__file__).parent / "fixtures" / "delong"
REFERENCE = pd.read_csv(FIXTURES / "reference.csv", comment="#").set_index("case")


@pytest.mark.parametrize("case", list(REFERENCE.index))
def test_delong_matches_pROC(case):
    data = pd.read_csv(FIXTURES / f"{case}.csv")
    ref = REFERENCE.loc[case]
    y = data["y"].to_numpy() == 1
    for k in ("1", "2"):
        ci = auc_delong(y, data[f"s{k}"])
        assert ci.auc == pytest.approx(roc_auc_score(y, data[f"s{k}"]), abs=1e-12)
        assert ci.auc == pytest.approx(ref[f"auc{k}"], abs=1e-6)
        assert ci.low == pytest.approx(ref[f"auc{k}_low"], abs=1e-6)
        assert ci.high == pytest.approx(ref[f"auc{k}_high"], abs=1e-6)
    test = delong_paired(y, data["s1"], data["s2"])
    assert test.z == pytest.approx(ref["z"], abs=1e-6)
    assert test.p == pytest.approx(ref["p"], abs=1e-6)


def test_wilson_interval_textbook_values():
    # Newcombe 1998, Table I: 81/263 -> 0.2553 to 0.3662; R: prop.test(81, 263, correct = FALSE)$conf.int
    lo, hi = wilson(81, 263)
    assert (lo, hi) == pytest.approx((0.2552885, 0.3662096), abs=1e-7)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(np.isnan(wilson(0, 0)))


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, np.nan, 0.01])
    assert adjusted[2] == pytest.approx(0.02) and adjusted[0] == pytest.approx(0.2) and np.isnan(adjusted[1])


def test_operating_points_and_rates():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    s = np.r_[rng.uniform(0.3, 1, 50), rng.uniform(0, 0.7, 50)]
    t = threshold_for_sensitivity(y, s, 0.9)
    assert at_threshold(y, s, t)["sensitivity"] >= 0.9
    assert at_threshold(y, s, t + 1e-9)["sensitivity"] < 0.9 or t >= s[y].max()
    youden = at_threshold(y, s, threshold_youden(y, s))
    for other in np.linspace(0.05, 0.95, 19):
        r = at_threshold(y, s, other)
        assert youden["sensitivity"] + youden["specificity"] >= r["sensitivity"] + r["specificity"] - 1e-12
    r = at_threshold(y, s, 0.5)
    assert r["tp"] + r["fn"] == 50 and r["ppv_ci_low"] <= r["ppv"] <= r["ppv_ci_high"]


def test_calibration_bins_and_brier():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=2000)
    y = rng.uniform(size=2000) < p  # perfectly calibrated
    cal = calibration(y, p, bins=10)
    assert cal["brier"] == pytest.approx(brier_score_loss(y, p))
    assert sum(b["count"] for b in cal["bins"]) == 2000
    for b in cal["bins"]:
        assert abs(b["observed"] - b["mean_predicted"]) < 0.1


def test_roc_band_contains_the_curve_and_resamples_patients():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.uniform(size=40) < 0.5, 3)
    s = y * 0.8 + rng.normal(0, 0.5, len(y))
    band = roc_band(y, s, groups=groups, n_boot=200, seed=0)
    assert ((band["low"] <= band["tpr"] + 1e-9) & (band["tpr"] <= band["high"] + 1e-9)).mean() > 0.95
    assert band["fpr"][0] == 0 and band["fpr"][-1] == 1


@pytest.mark.parametrize("seed", range(6))
def test_our_roc_curve_is_scikit_learns(seed):
    """core.results.stats.roc_curve replaces sklearn's in hot loops (operating points, bootstrap bands): the same points and thresholds,
    ties and corner-dropping included."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    from core.results.stats import roc_curve

    rng = np.random.default_rng(seed)
    n = [7, 50, 400, 1000, 33, 200][seed]
    y = rng.random(n) < 0.4
    y[0], y[1] = True, False
    s = np.round(rng.random(n), [1, 2, 3, 6, 1, 2][seed])  # coarse rounding: many tied scores
    for scores in (s, np.ones(n), np.where(np.arange(n) % 2, 0.3, 0.7)):  # and one or two distinct scores
        for ours, theirs in zip(roc_curve(y, scores), sk_roc_curve(y, scores)):
            np.testing.assert_array_equal(ours, theirs)


def test_mid_ranks_are_scipys():
    """DeLong's placements need mid-ranks; core.results.stats computes them with numpy (scipy.stats costs seconds to import)."""
    from scipy.stats import rankdata as scipy_rankdata

    from core.results.stats import rankdata

    rng = np.random.default_rng(3)
    for x in (rng.random(50), np.round(rng.random(200), 1), np.ones(5), np.array([2.0]), np.array([3, 1, 2, 1, 3, 3])):
        np.testing.assert_array_equal(rankdata(x), scipy_rankdata(x))


def test_calibration_slope_and_intercept_match_a_statsmodels_logistic_fit():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 400)
    logit = np.log(p / (1 - p))
    y = rng.random(400) < 1 / (1 + np.exp(-(0.3 + 0.7 * logit)))  # miscalibrated: too extreme, too low
    from core.results.stats import calibration_fit

    got = calibration_fit(y, p)
    slope = sm.GLM(y.astype(float), sm.add_constant(logit), family=sm.families.Binomial()).fit()
    intercept = sm.GLM(y.astype(float), np.ones((400, 1)), family=sm.families.Binomial(), offset=logit).fit()
    assert got["calibration_slope"] == pytest.approx(slope.params[1], rel=1e-6)
    lo, hi = slope.conf_int()[1]
    assert (got["calibration_slope_ci_low"], got["calibration_slope_ci_high"]) == pytest.approx((lo, hi), rel=1e-5)
    assert got["calibration_intercept"] == pytest.approx(intercept.params[0], rel=1e-6)
    lo, hi = intercept.conf_int()[0]
    assert (got["calibration_intercept_ci_low"], got["calibration_intercept_ci_high"]) == pytest.approx((lo, hi), rel=1e-5)
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_calibration_slope_matches_scikit_learn_and_perfect_calibration_reads_as_ideal():
    from sklearn.linear_model import LogisticRegression

    from core.results.stats import calibration_fit

    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.95, 5000)
    y = rng.random(5000) < p  # honest probabilities
    logit = np.log(p / (1 - p))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit[:, None], y)
    got = calibration_fit(y, p)
    assert got["calibration_slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-5)
    assert got["calibration_slope_ci_low"] < 1 < got["calibration_slope_ci_high"]
    assert got["calibration_intercept_ci_low"] < 0 < got["calibration_intercept_ci_high"]


def test_net_benefit_is_the_textbook_formula_on_hand_made_data():
    from core.results.stats import decision_curve

    # 10 images, 4 positive; at pt = 0.25 the model calls 5 positive: 3 true, 2 false
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    p = np.array([0.9, 0.8, 0.3, 0.1, 0.7, 0.26, 0.2, 0.1, 0.05, 0.0])
    row = decision_curve(y, p, thresholds=np.array([0.25]))[0]
    odds = 0.25 / 0.75
    assert row["net_benefit"] == pytest.approx(3 / 10 - 2 / 10 * odds)
    assert row["net_benefit_treat_all"] == pytest.approx(4 / 10 - 6 / 10 * odds)
    default = decision_curve(y, p)
    assert [r["threshold"] for r in default][:3] == [0.01, 0.02, 0.03] and len(default) == 99


def test_a_calibration_fit_without_a_finite_maximum_is_not_a_number_not_a_crash():
    from core.results.stats import calibration_fit

    y = np.array([0, 0, 0, 1, 1, 1], bool)
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])  # perfectly separated: the slope runs off to infinity
    got = calibration_fit(y, p)
    assert np.isnan(got["calibration_slope"]) and np.isnan(got["calibration_slope_ci_low"])
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2))
