"""Reader-study statistics: reader AUCs as scikit-learn gives them, rates and Wilson intervals as statsmodels gives
them, McNemar as statsmodels' exact test, DeLong as core.results.stats, and every figure on exactly the images read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar as statsmodels_mcnemar
from statsmodels.stats.proportion import proportion_confint

from core.results.readers import binary_metrics, compare, mcnemar, reader_score, study_statistics
from core.results.stats import delong_paired

# --- the score and the rates ---------------------------------------------------------------------------------------


def test_a_readers_score_runs_from_a_confident_negative_to_a_confident_positive():
    assert reader_score(0, 100) == 0
    assert reader_score(0, 40) == 30
    assert reader_score(0, 0) == reader_score(1, 0) == 50
    assert reader_score(1, 40) == 70
    assert reader_score(1, 100) == 100


def test_a_readers_auc_is_scikit_learns_on_their_scores():
    truth = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    calls = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0])
    confidence = np.array([90, 60, 60, 20, 80, 70, 95, 50, 30, 60, 10, 40, 80])
    scores = np.array([reader_score(c, f) for c, f in zip(calls, confidence)])
    m = binary_metrics(truth, calls, scores)
    assert m["auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    assert 0 <= m["auc_ci_low"] < m["auc_ci_high"] <= 1


def test_sensitivity_specificity_and_accuracy_are_the_hand_counted_rates_with_statsmodels_wilson_intervals():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    calls = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])  # tp 3, fn 1, tn 5, fp 1
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.2, 0.4, 0.1, 0.6])
    m = binary_metrics(truth, calls, scores)
    assert (m["n"], m["n_positive"]) == (10, 4)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    for name, k, n in [("sensitivity", 3, 4), ("specificity", 5, 6), ("accuracy", 8, 10)]:
        low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert m[f"{name}_ci_low"] == pytest.approx(low, abs=1e-9)
        assert m[f"{name}_ci_high"] == pytest.approx(high, abs=1e-9)


def test_a_rate_without_a_denominator_and_an_auc_without_both_classes_are_none_not_zero():
    m = binary_metrics(np.array([True, True, True]), np.array([1, 0, 1]), np.array([80.0, 30.0, 90.0]))
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] is m["specificity_ci_low"] is m["specificity_ci_high"] is None
    assert m["auc"] is m["auc_ci_low"] is m["auc_ci_high"] is None
    json.dumps(m, allow_nan=False)


def test_the_metrics_are_plain_python_numbers():
    m = binary_metrics(np.array([1, 0, 1, 0], dtype=bool), np.array([1, 0, 0, 0]), np.array([0.9, 0.2, 0.4, 0.3]))
    assert all(v is None or type(v) in (int, float) for v in m.values())


# --- McNemar and paired comparisons --------------------------------------------------------------------------------


def _paired_outcomes(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of a and b from a 2 x 2 table [[both right, a right b wrong], [a wrong b right, both wrong]]."""
    (both, b), (c, neither) = table
    a = [True] * both + [True] * b + [False] * c + [False] * neither
    o = [True] * both + [False] * b + [True] * c + [False] * neither
    return np.array(a), np.array(o)


@pytest.mark.parametrize("table", [
    [[5, 0], [0, 5]],  # no discordant pair
    [[10, 0], [9, 3]],  # lopsided: every discordant pair favours b
    [[4, 12], [1, 2]],  # lopsided the other way
    [[3, 4], [4, 3]],  # balanced
    [[20, 7], [3, 15]],
    [[0, 1], [0, 0]],  # one discordant pair
    [[50, 40], [25, 10]],  # larger counts
])
def test_mcnemar_is_statsmodels_exact_test(table):
    a, b = _paired_outcomes(table)
    ours = mcnemar(a, b)
    assert (ours["b"], ours["c"]) == (table[0][1], table[1][0])
    assert ours["p"] == pytest.approx(statsmodels_mcnemar(np.array(table), exact=True).pvalue, rel=1e-12, abs=1e-15)
    assert ours["method"] == "exact McNemar (binomial on discordant pairs)"


def test_mcnemar_without_discordant_pairs_is_one():
    same = np.array([True, False, True, True])
    assert mcnemar(same, same) == {"b": 0, "c": 0, "p": 1.0, "method": "exact McNemar (binomial on discordant pairs)"}


def _two_readings(seed: int = 3, n: int = 40):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.45
    score_a = np.clip(truth * 0.3 + rng.normal(0.4, 0.2, n), 0, 1)
    score_b = np.clip(truth * 0.15 + rng.normal(0.45, 0.2, n), 0, 1)
    return truth, score_a, score_b, score_a >= 0.5, score_b >= 0.5


def test_a_comparisons_delong_p_is_the_paired_delong_test_of_the_stats_module():
    truth, score_a, score_b, call_a, call_b = _two_readings()
    out = compare(truth, score_a, score_b, call_a, call_b)
    reference = delong_paired(truth, score_a, score_b)
    assert out["delong_p"] == pytest.approx(reference.p, rel=1e-12)
    assert out["auc_a"] == pytest.approx(roc_auc_score(truth, score_a))
    assert out["auc_b"] == pytest.approx(roc_auc_score(truth, score_b))
    assert out["auc_difference"] == pytest.approx(out["auc_a"] - out["auc_b"])
    assert out["n"] == len(truth)


def test_a_comparisons_mcnemar_is_on_whether_each_call_was_right():
    truth, score_a, score_b, call_a, call_b = _two_readings()
    out = compare(truth, score_a, score_b, call_a, call_b)
    reference = mcnemar(call_a == truth, call_b == truth)
    assert (out["mcnemar_b"], out["mcnemar_c"], out["mcnemar_p"]) == (reference["b"], reference["c"], reference["p"])


def test_a_comparison_with_one_image_of_a_class_has_aucs_but_no_delong_p():
    truth = np.array([True, False, False, False])
    out = compare(truth, np.array([0.9, 0.4, 0.8, 0.1]), np.array([0.5, 0.7, 0.6, 0.2]), np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0]))
    assert out["auc_a"] == pytest.approx(roc_auc_score(truth, [0.9, 0.4, 0.8, 0.1]))
    assert out["auc_b"] == pytest.approx(roc_auc_score(truth, [0.5, 0.7, 0.6, 0.2]))
    assert out["delong_p"] is None  # DeLong's variance needs two images of each class


def test_a_comparison_without_both_classes_has_no_auc_and_no_delong_p():
    truth = np.array([True, True, True])
    out = compare(truth, np.array([0.9, 0.4, 0.8]), np.array([0.2, 0.7, 0.6]), np.array([1, 0, 1]), np.array([0, 1, 1]))
    assert out["auc_a"] is out["auc_b"] is out["auc_difference"] is out["delong_p"] is None
    assert (out["mcnemar_b"], out["mcnemar_c"]) == (1, 1)


# --- a whole study --------------------------------------------------------------------------------------------------

TRUTH = [True] * 5 + [False] * 5
PROB = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.6, 0.1, 0.35, 0.55]
IMAGES = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "truth": TRUTH, "prob_positive": PROB})

# (reader, session, image, call, confidence, seconds)
READS = [
    # bob first and ann's aided reads before her unaided ones: the output's order must not depend on the input's
    *[("bob", "unaided", f"i{k}", c, f, 10.0 + k) for k, c, f in
      [(0, 1, 90), (1, 1, 60), (2, 0, 40), (5, 0, 80), (6, 1, 30), (7, 0, 70)]],  # bob read 6 of the 10
    *[("ann", "aided", f"i{k}", c, f, 5.0) for k, c, f in
      [(2, 1, 70), (3, 1, 80), (4, 1, 40), (5, 0, 90), (6, 0, 60), (7, 0, 80), (8, 1, 20), (9, 0, 50)]],  # i2..i9
    *[("ann", "unaided", f"i{k}", c, f, 20.0) for k, c, f in
      [(0, 1, 80), (1, 1, 90), (2, 0, 30), (3, 1, 60), (4, 0, 50), (5, 0, 70), (6, 1, 40), (7, 0, 90), (8, 1, 30)]],  # i0..i8
    # teaching reads: demonstrations, deliberately wrong and of images the reader never read otherwise (bob, i9)
    ("ann", "teaching", "i0", 0, 100, 1.0), ("ann", "teaching", "i9", 1, 100, 1.0), ("bob", "teaching", "i9", 1, 100, 1.0),
]


def _reads(rows=READS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["reader", "session", "image_id", "call", "confidence", "seconds"])


def _expected(reader: str, session: str) -> dict:
    """The reader's and the model's metrics computed by hand-picking the reader's rows, as an independent path."""
    reads = _reads()
    mine = reads[(reads["reader"] == reader) & (reads["session"] == session)].merge(IMAGES, on="image_id")
    y = mine["truth"].to_numpy()
    scores = np.array([reader_score(c, f) for c, f in zip(mine["call"], mine["confidence"])])
    p = mine["prob_positive"].to_numpy()
    return {"reader": binary_metrics(y, mine["call"].to_numpy(), scores), "model": binary_metrics(y, p >= 0.5, p),
            "y": y, "scores": scores, "p": p}


def test_teaching_reads_are_counted_and_left_out_of_every_statistic():
    out = study_statistics(_reads(), IMAGES)
    assert out["teaching_reads_excluded"] == 3
    assert {(r["reader"], r["session"]) for r in out["readers"]} == {("ann", "unaided"), ("ann", "aided"), ("bob", "unaided")}
    without_teaching = study_statistics(_reads([r for r in READS if r[1] != "teaching"]), IMAGES)
    assert without_teaching["teaching_reads_excluded"] == 0
    assert {k: v for k, v in out.items() if k != "teaching_reads_excluded"} == \
        {k: v for k, v in without_teaching.items() if k != "teaching_reads_excluded"}


def test_readers_are_listed_by_name_then_unaided_before_aided():
    out = study_statistics(_reads(), IMAGES)
    assert [(r["reader"], r["session"]) for r in out["readers"]] == [("ann", "unaided"), ("ann", "aided"), ("bob", "unaided")]


def test_a_reader_who_read_6_of_10_images_is_judged_with_the_model_on_those_6_only():
    bob = study_statistics(_reads(), IMAGES)["readers"][2]
    assert (bob["reader"], bob["n_read"]) == ("bob", 6)
    assert bob["median_seconds"] == pytest.approx(np.median([10, 11, 12, 15, 16, 17]))
    # the model on i0 i1 i2 (0.9 0.8 0.4, positive) and i5 i6 i7 (0.2 0.6 0.1, negative): 2 of 3 each way
    assert (bob["model_metrics"]["n"], bob["model_metrics"]["n_positive"]) == (6, 3)
    assert bob["model_metrics"]["sensitivity"] == pytest.approx(2 / 3)
    assert bob["model_metrics"]["specificity"] == pytest.approx(2 / 3)
    assert bob["model_metrics"]["auc"] == pytest.approx(roc_auc_score(TRUTH[:3] + TRUTH[5:8], PROB[:3] + PROB[5:8]))
    expected = _expected("bob", "unaided")
    assert bob["reader_metrics"] == expected["reader"] and bob["model_metrics"] == expected["model"]
    assert bob["reader_metrics"]["auc"] == pytest.approx(roc_auc_score(expected["y"], expected["scores"]))


def test_each_readers_comparison_with_the_model_is_on_their_own_images():
    out = study_statistics(_reads(), IMAGES)
    for entry in out["readers"]:
        e = _expected(entry["reader"], entry["session"])
        calls = e["scores"] > 50
        assert entry["n_read"] == entry["reader_metrics"]["n"] == entry["model_metrics"]["n"] == entry["vs_model"]["n"]
        assert entry["vs_model"] == compare(e["y"], e["scores"], e["p"], calls, e["p"] >= 0.5)
        assert entry["vs_model"]["delong_p"] == pytest.approx(delong_paired(e["y"], e["scores"], e["p"]).p)


def test_aided_is_compared_with_unaided_only_on_the_images_read_in_both():
    out = study_statistics(_reads(), IMAGES)
    assert [r["reader"] for r in out["aided_vs_unaided"]] == ["ann"]  # bob has no aided session
    ann = out["aided_vs_unaided"][0]
    assert ann["n"] == 7  # unaided i0..i8, aided i2..i9: i2..i8 in both
    aided, unaided = _expected("ann", "aided"), _expected("ann", "unaided")
    both = slice(0, 7)  # aided rows i2..i8
    shared = slice(2, 9)  # unaided rows i2..i8
    assert ann["auc_a"] == pytest.approx(roc_auc_score(aided["y"][both], aided["scores"][both]))
    assert ann["auc_b"] == pytest.approx(roc_auc_score(unaided["y"][shared], unaided["scores"][shared]))
    assert ann["delong_p"] == pytest.approx(delong_paired(aided["y"][both], aided["scores"][both], unaided["scores"][shared]).p)
    right_aided = (aided["scores"][both] > 50) == aided["y"][both]
    right_unaided = (unaided["scores"][shared] > 50) == unaided["y"][shared]
    assert (ann["mcnemar_b"], ann["mcnemar_c"]) == (int((right_aided & ~right_unaided).sum()), int((~right_aided & right_unaided).sum()))


def test_pooled_figures_count_the_model_once_per_read_and_say_they_are_not_an_mrmc_analysis():
    out = study_statistics(_reads(), IMAGES)
    assert [p["session"] for p in out["pooled"]] == ["unaided", "aided"]
    unaided, aided = out["pooled"]
    assert (unaided["n_readers"], unaided["n_read"]) == (2, 15)
    # ann's unaided i0..i8 and bob's i0 i1 i2 i5 i6 i7: the model's i0..i2 and i5..i7 count twice
    assert (unaided["model_metrics"]["n"], unaided["model_metrics"]["n_positive"]) == (15, 8)
    assert unaided["model_metrics"]["sensitivity"] == pytest.approx((3 + 2) / (5 + 3))
    assert unaided["model_metrics"]["specificity"] == pytest.approx((3 + 2) / (4 + 3))
    assert (unaided["reader_metrics"]["n"], unaided["reader_metrics"]["n_positive"]) == (15, 8)
    assert (aided["n_readers"], aided["n_read"], aided["model_metrics"]["n"]) == (1, 8, 8)
    assert "independent" in unaided["method"] and "Obuchowski-Rockette" in unaided["method"]


def test_the_models_calls_follow_the_threshold():
    out = study_statistics(_reads(), IMAGES, threshold=0.35)
    assert out["threshold"] == 0.35
    bob = out["readers"][2]  # bob's images at 0.35: i0 i1 i2 all positive, i6 a false positive
    assert (bob["model_metrics"]["sensitivity"], bob["model_metrics"]["specificity"]) == (1.0, pytest.approx(2 / 3))


def test_the_whole_output_survives_json_without_nans():
    out = study_statistics(_reads(), IMAGES)
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert set(out) == {"readers", "aided_vs_unaided", "pooled", "teaching_reads_excluded", "threshold"}


def test_calls_given_as_booleans_and_a_study_with_one_positive_still_give_json():
    reads = _reads([("ann", "unaided", "i0", True, 80, 4.0), ("ann", "unaided", "i5", False, 20, 6.0),
                    ("ann", "unaided", "i6", False, 50, 5.0)])
    out = study_statistics(reads, IMAGES)
    ann = out["readers"][0]
    assert ann["reader_metrics"]["auc"] == 1.0 and ann["reader_metrics"]["auc_ci_low"] is None  # one positive: no interval
    assert ann["vs_model"]["delong_p"] is None
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("change, message", [
    ({"call": 2}, "a call must be 0"), ({"confidence": 120}, "a confidence must be a number from 0 to 100"),
    ({"session": "second look"}, "unknown session"),
])
def test_calls_confidences_and_sessions_outside_their_range_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        study_statistics(_reads().assign(**change), IMAGES)


def test_an_image_listed_twice_is_refused():
    with pytest.raises(ValueError, match="image 'i0' appears more than once"):
        study_statistics(_reads(), pd.concat([IMAGES, IMAGES.head(1)]))


def test_a_read_counted_twice_is_refused():
    with pytest.raises(ValueError, match="duplicate reads: reader 'bob' read image 'i0' more than once in the unaided session"):
        study_statistics(_reads(READS + [("bob", "unaided", "i0", 0, 50, 3.0)]), IMAGES)


def test_the_same_image_in_another_session_is_not_a_duplicate():
    out = study_statistics(_reads(READS + [("bob", "aided", "i0", 1, 90, 3.0)]), IMAGES)
    assert [(r["reader"], r["session"]) for r in out["readers"]][-1] == ("bob", "aided")


def test_a_read_of_an_image_outside_the_study_is_refused():
    with pytest.raises(ValueError, match="not in the study's images: i99"):
        study_statistics(_reads(READS + [("ann", "aided", "i99", 1, 50, 3.0)]), IMAGES)


def test_a_study_without_reads_has_empty_lists_not_an_error():
    out = study_statistics(_reads([]), IMAGES)
    assert out == {"readers": [], "aided_vs_unaided": [], "pooled": [], "teaching_reads_excluded": 0, "threshold": 0.5}
