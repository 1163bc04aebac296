"""Sweeps share splits; the report is computed from the stored predictions with the documented JSON keys."""

from __future__ import annotations

import json

import pytest

from core import CxrError
from core.results.report import sweep_run_ids, table3, to_json, to_markdown
from core.results.stats import auc_delong, delong_paired
from core.results.store import Store
from core.training.sweep import parse_grid, run_sweep

from conftest import blob_dataset, tiny_config


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):

    root = tmp_path_factory.mktemp("sweep")
    data = blob_dataset(root / "data", n_per_class=12)
    base = tiny_config(data, batch_size=8, folds=3, eval_every=2)
    store = Store(root / "runs")
    sweep_id, results = run_sweep(base, parse_grid(["max_iterations=1,3", "learning_rate=1e-3,3e-3"]), store=store)
    return store, sweep_id, [r.run_id for r in results]


@pytest.mark.slow
def test_every_run_of_a_sweep_uses_the_same_splits(sweep):
    store, sweep_id, run_ids = sweep
    assert len(run_ids) == 4 and sweep_run_ids(store, sweep_id) == run_ids
    first = store.splits(run_ids[0])[["image_id", "fold"]]
    for run_id in run_ids[1:]:
        assert store.splits(run_id)[["image_id", "fold"]].equals(first)


def test_report_json_has_the_documented_keys_and_numbers_from_the_predictions(sweep):
    store, sweep_id, run_ids = sweep
    rows = json.loads(to_json(table3(store, run_ids)))
    for key in ("run_id", "auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity", "specificity", "train_seconds", "delong_p_vs_first",
                "brier", "calibration_intercept", "calibration_intercept_ci_low", "calibration_intercept_ci_high",
                "calibration_slope", "calibration_slope_ci_low", "calibration_slope_ci_high", "decision_curve"):
        assert key in rows[0], key
    curve = rows[0]["decision_curve"]
    assert len(curve) == 99 and set(curve[0]) == {"threshold", "net_benefit", "net_benefit_treat_all"}
    assert rows[0]["delong_p_vs_first"] is None
    assert set(rows[1]["varies"]) == {"max_iterations", "learning_rate"}
    # recompute row 2 from its own and the first run's stored predictions
    def scores(run_id):
        run = store.run(run_id)
        positive = json.loads(run["classes"]).index(run["positive_class"])
        p = store.predictions(run_id).sort_values("image_id")
        return p["label_index"].to_numpy() == positive, p["prob_positive"].to_numpy()

    y, s_first = scores(run_ids[0])
    _, s_other = scores(run_ids[2])
    assert rows[2]["auc"] == pytest.approx(auc_delong(y, s_other).auc)
    assert rows[2]["auc_ci_low"] == pytest.approx(auc_delong(y, s_other).low)
    assert rows[2]["delong_p_vs_first"] == pytest.approx(delong_paired(y, s_other, s_first).p)


def test_markdown_report_is_a_table3_layout(sweep):
    store, _, run_ids = sweep
    text = to_markdown(table3(store, run_ids))
    header = text.splitlines()[0]
    for column in ("max_iterations", "accuracy %", "sensitivity %", "specificity %", "AUC %", "training time", "DeLong p"):
        assert column in header
    main_table = text.split("\n\n")[0].splitlines()
    assert len(main_table) == 2 + 4  # header, rule, one row per run
    assert "Operating points" in text


@pytest.mark.parametrize("spec, message", [("folds=3,5", "cannot vary"), ("max_iteration=1,2", "unknown setting"), ("lr", "expects field=v1,v2")])
def test_bad_grids_are_refused_before_any_run(spec, message):
    with pytest.raises(CxrError, match=message):
        parse_grid([spec])


def test_operating_points_say_where_their_threshold_came_from(sweep):
    store, _, run_ids = sweep
    points = {p["name"]: p for p in table3(store, run_ids[-1:], min_sensitivity=0.8)[0]["operating_points"]}
    assert set(points) == {"0.5", "youden", "youden (cross-fitted)", "sensitivity>=0.8", "sensitivity>=0.8 (cross-fitted)"}
    assert points["0.5"]["chosen_on"] == "fixed" and points["0.5"]["threshold"] == 0.5
    assert "optimistic" in points["youden"]["chosen_on"] and "other folds" in points["youden (cross-fitted)"]["chosen_on"]
    assert points["sensitivity>=0.8"]["sensitivity"] >= 0.8
    for p in points.values():
        assert p["tp"] + p["fn"] + p["fp"] + p["tn"] == 24
        assert p["sensitivity_ci_low"] <= p["sensitivity"] <= p["sensitivity_ci_high"]


def test_report_has_per_fold_rates_calibration_and_a_patient_bootstrap_roc_band(sweep):
    from core.results.report import roc_with_band

    store, _, run_ids = sweep
    row = table3(store, run_ids[-1:])[0]
    for name in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert set(row["per_fold"][name]) == {"mean", "sd"}
    assert 0 <= row["calibration"]["brier"] <= 1 and sum(b["count"] for b in row["calibration"]["bins"]) == 24
    band = roc_with_band(store, run_ids[-1], n_boot=50)
    assert band["resampled"] == "images"  # class folders carry no patient ids
    assert len(band["fpr"]) == len(band["tpr"]) == len(band["low"]) == len(band["high"])
