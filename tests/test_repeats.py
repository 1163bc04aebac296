"""Repeated k-fold cross-validation: R new splits, every image predicted once per repeat, the first repeat as the run's
result, the spread over repeats beside it, and the corrected resampled t-test between runs on the same splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from core import CxrError
from core.config import RunConfig
from core.data.splits import assign_folds, assign_repeated_folds, held_out
from core.results.repeats import corrected_test, per_repeat, summary
from core.results.report import _p, table3, table_cells, to_json, to_markdown
from core.results.stats import corrected_resampled_ttest
from core.results.store import Store
from core.training.engine import resume_cross_validation, run_cross_validation
from core.training.sweep import parse_grid, run_sweep

from conftest import blob_dataset, tiny_config


def test_each_repeat_is_a_new_grouped_split_numbered_on_from_the_last():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 30)
    groups = np.array([f"p{i // 2}" for i in range(60)])  # two images per patient
    rng.shuffle(groups)
    folds = assign_repeated_folds(labels, groups, folds=5, repeats=3, seed=4)
    assert folds.shape == (3, 60)
    for r in range(3):
        assert set(folds[r]) == set(range(5 * r, 5 * r + 5))  # fold g is fold g % 5 of repeat g // 5
        for patient in set(groups):  # a patient's images share a fold in every repeat
            assert len(set(folds[r][groups == patient])) == 1
    np.testing.assert_array_equal(folds[0], assign_folds(labels, groups, folds=5, seed=4))  # repeats=1 splits as before
    assert not np.array_equal(folds[1] - 5, folds[0]) and not np.array_equal(folds[2] - 10, folds[1] - 5)
    for g in range(15):  # every image held out exactly once per repeat
        assert held_out(folds, g).sum() == (folds == g).sum()
    assert sum(held_out(folds, g).astype(int) for g in range(15)).tolist() == [3] * 60


def test_the_corrected_resampled_t_test_on_a_worked_example():
    # d = a - b = 0.02, 0.01, 0.03, 0.00, 0.04: mean 0.02, sample variance 1e-3 / 4 = 2.5e-4.
    # Nadeau-Bengio with 80 training and 20 test images per fold: variance factor 1/5 + 20/80 = 0.45,
    # so t = 0.02 / sqrt(0.45 * 2.5e-4) = 0.02 / 0.0106066 = 1.88562 on 4 degrees of freedom.
    a = np.array([0.92, 0.91, 0.93, 0.90, 0.94])
    b = np.full(5, 0.90)
    test = corrected_resampled_ttest(a, b, n_train=80, n_test=20)
    assert test.mean_difference == pytest.approx(0.02)
    assert test.t == pytest.approx(1.88562, abs=1e-5) and test.df == 4 and test.n == 5
    assert test.p == pytest.approx(2 * scipy_stats.t.sf(1.88562, 4), abs=1e-5)  # 0.1325
    # the uncorrected paired t-test (scipy) is t = 2.828: the correction is what keeps overlapping training sets honest
    naive = scipy_stats.ttest_rel(a, b)
    assert naive.statistic == pytest.approx(2.82843, abs=1e-4) and naive.pvalue < test.p


def test_per_repeat_rows_and_their_spread_are_each_repeats_pooled_figures():
    from sklearn.metrics import roc_auc_score
    import pandas as pd

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    frames = [pd.DataFrame({"repeat": r, "image_id": [f"i{k}" for k in range(40)], "fold": r * 2 + np.arange(40) % 2,
                            "label_index": y, "prob_positive": np.clip(0.5 * y + rng.normal(0.25, 0.25 + 0.1 * r, 40), 0, 1)})
              for r in range(3)]
    rows = per_repeat(pd.concat(frames), positive=1, threshold=0.5)
    for row, frame in zip(rows, frames):
        assert row["auc"] == pytest.approx(roc_auc_score(frame["label_index"], frame["prob_positive"]))
        call = frame["prob_positive"] >= 0.5
        assert row["sensitivity"] == pytest.approx(call[y == 1].mean()) and row["specificity"] == pytest.approx((~call)[y == 0].mean())
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    spread = summary(rows)
    aucs = [r["auc"] for r in rows]
    assert spread["repeats"] == 3 and spread["auc_mean"] == pytest.approx(np.mean(aucs))
    assert spread["auc_sd"] == pytest.approx(np.std(aucs, ddof=1)) and (spread["auc_min"], spread["auc_max"]) == (min(aucs), max(aucs))


def test_repeats_cannot_go_with_a_users_own_fold_column():
    with pytest.raises(CxrError, match="fold_column"):
        RunConfig(repeats=3, fold_column="fold")


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeats")
    data = blob_dataset(root / "data", n_per_class=8, size=32)
    store = Store(root / "runs")
    base = tiny_config(data, folds=2, max_iterations=2, batch_size=8, gradcam_max=4)
    single = run_cross_validation(base, store=store)
    sweep_id, runs = run_sweep(base.replace(repeats=3), parse_grid(["learning_rate=1e-3,3e-3"]), store=store)
    return store, single.run_id, [r.run_id for r in runs]


@pytest.mark.slow
def test_a_repeated_run_stores_r_times_k_folds_and_every_image_once_per_repeat(repeated):
    store, single, (run_id, _) = repeated
    assert len(store.folds(run_id, every_repeat=True)) == 6 and store.folds(run_id)["fold"].tolist() == [0, 1]
    preds = store.repeated_predictions(run_id)
    assert preds.groupby("repeat")["image_id"].apply(lambda ids: ids.is_unique and len(ids) == 16).all()
    assert sorted(preds["repeat"].unique()) == [0, 1, 2]
    assert (preds["fold"] // 2 == preds["repeat"]).all()
    # the run's own statistics are its first repeat: the same as the same settings without repeats
    assert store.predictions(run_id)[["image_id", "fold", "prob_positive"]].equals(store.predictions(single)[["image_id", "fold", "prob_positive"]])
    assert store.run_record(run_id).auc == pytest.approx(store.run_record(single).auc)
    # heat maps and their localisation belong to the first repeat only
    assert set(store.cams(run_id)["fold"]) <= {0, 1}


@pytest.mark.slow
def test_table3_and_the_json_report_show_the_spread_over_repeats_and_the_corrected_test(repeated):
    store, single, (a, b) = repeated
    rows = json.loads(to_json(table3(store, [a, b])))
    assert [r["repeat"] for r in rows[0]["repeats"]] == [0, 1, 2]
    assert rows[0]["repeats_summary"]["repeats"] == 3
    assert rows[0]["repeats"][0]["auc"] == pytest.approx(rows[0]["auc"])  # repeat 0 is the run's pooled result
    # the sweep's runs share all three repeats' splits, so the corrected test compares them fold by fold
    assert store.all_splits(a)[["repeat", "image_id", "fold"]].equals(store.all_splits(b)[["repeat", "image_id", "fold"]])
    test = rows[1]["corrected_test_vs_first"]
    assert test["folds"] == 6 and test["df"] == 5 and rows[1]["corrected_p_vs_first"] == test["p"]
    fa, fb = store.folds(b, every_repeat=True), store.folds(a, every_repeat=True)
    assert test["mean_auc_difference"] == pytest.approx(float((fa["auc"] - fb["auc"]).mean()))
    header, body = table_cells(table3(store, [a, b]))
    spread = header.index("AUC % over repeats, mean ± SD (range)")
    assert header.index("training time") == spread + 1 and header[-1] == "corrected t-test p vs first"
    assert all(len(cells) == len(header) for cells in body)  # every cell under its own header
    assert body[0][spread].endswith("3 repeats)") and body[0][-1] == "-" and body[1][-1] == _p(rows[1]["corrected_p_vs_first"])
    assert "min" in body[0][spread + 1]  # the training time follows the spread, not the other way round
    assert "corrected t-test p vs first" in to_markdown(table3(store, [a, b]))
    # a run on other splits (one repeat) gets no corrected test against them
    assert corrected_test(store, single, a) is None


@pytest.mark.slow
def test_a_repeated_run_resumes_the_folds_of_later_repeats(repeated, tmp_path):
    store, _, (run_id, _) = repeated
    store.clear_folds(run_id, [4, 5])  # as if the process died in the last repeat
    store.update_run(run_id, status="interrupted", pid=None)
    resume_cross_validation(store, run_id)
    assert store.run(run_id)["status"] == "finished"
    assert len(store.folds(run_id, every_repeat=True)) == 6
    assert (store.repeated_predictions(run_id).groupby("repeat").size() == 16).all()
