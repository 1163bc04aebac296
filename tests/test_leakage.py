"""Leakage audit: no patient may sit in two folds unless the user turned grouping off on purpose, and then the run says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import CxrError
from core.data.splits import audit_leakage, parse_user_folds
from core.training.engine import run_cross_validation
from core.results.store import Store

from conftest import tiny_config, write_image


def test_audit_names_the_leaking_patients_and_counts_their_images():
    groups = np.array(["p1", "p1", "p2", "p2", "p3"])
    assert audit_leakage(np.array([0, 0, 1, 1, 0]), groups).status == "clean"
    audit = audit_leakage(np.array([0, 1, 1, 1, 0]), groups)
    assert (audit.status, audit.leaking_patients, audit.leaking_images, audit.examples) == ("leaks", 1, 2, ("p1",))
    assert "1 of 3 patients (2 images)" in audit.message
    assert audit_leakage(np.array([0, 1]), None).status == "unchecked"


@pytest.mark.parametrize("values, folds", [(["1", "2", "3", "1"], [0, 1, 2, 0]), (["0", "1", "1"], [0, 1, 1])])
def test_user_folds_may_count_from_one_or_zero(values, folds):
    assert parse_user_folds(values, column="fold").tolist() == folds


@pytest.mark.parametrize("values, message", [(["1", "x"], "whole fold numbers"), (["1", "3"], "without gaps"), (["2", "2"], "without gaps"),
                                             (["1", "1"], "single fold")])
def test_bad_user_folds_are_refused_with_the_rule(values, message):
    with pytest.raises(CxrError, match=message):
        parse_user_folds(values, column="fold")


def _manifest(root: Path, folds: list[int]) -> Path:
    """Eight patients with two images each; `folds` gives each image's fold (16 values)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        patient, label = f"p{i // 2}", "Effusion" if (i // 2) % 2 else "Normal"
        img = rng.integers(20, 90, (32, 32)).astype(np.uint8)
        if label == "Effusion":
            img[20:] += 100
        write_image(root / f"img{i:02d}.png", img)
        rows.append({"path": f"img{i:02d}.png", "label": label, "patient": patient, "fold": folds[i]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.slow
def test_a_user_split_that_keeps_patients_together_runs_and_is_recorded_clean(tmp_path):
    folds = [1 + (i // 2) % 2 for i in range(16)]  # a patient's two images share a fold
    csv = _manifest(tmp_path / "data", folds)
    store = Store(tmp_path / "runs")
    cfg = tiny_config(csv, group_column="patient", fold_column="fold", folds=2, gradcam=False, max_iterations=1)
    result = run_cross_validation(cfg, store=store)
    run = store.run(result.run_id)
    assert run["leak_status"] == "clean" and "no patient in two folds (8 patients)" == run["leakage"]
    splits = store.splits(result.run_id).set_index("image_id")["fold"]
    assert [int(splits[f"img{i:02d}.png"]) for i in range(16)] == [f - 1 for f in folds]  # the user's folds, 0-based


@pytest.mark.slow
def test_a_leaking_user_split_is_refused_unless_grouping_is_turned_off_and_then_marked(tmp_path):
    folds = [1 + i % 2 for i in range(16)]  # each patient's two images in different folds
    csv = _manifest(tmp_path / "data", folds)
    store = Store(tmp_path / "runs")
    cfg = tiny_config(csv, group_column="patient", fold_column="fold", folds=2, gradcam=False, max_iterations=1)
    with pytest.raises(CxrError, match=r"would leak.*8 of 8 patients.*group_by_patient=false"):
        run_cross_validation(cfg, store=store)
    assert store.list_runs().empty  # refused before any run was created

    result = run_cross_validation(cfg.replace(group_by_patient=False), store=store)
    run = store.run(result.run_id)
    assert run["leak_status"] == "leaks" and run["leakage"].startswith("8 of 8 patients (16 images)")
    from core.results.report import table3, to_markdown

    assert "LEAKING SPLIT" in to_markdown(table3(store, [result.run_id]))


@pytest.mark.slow
def test_grouping_off_on_tool_made_folds_is_audited_too(tmp_path):
    csv = _manifest(tmp_path / "data", [1] * 16)
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(csv, group_column="patient", folds=2, gradcam=False, max_iterations=1, group_by_patient=False),
                                  store=store)
    assert store.run(result.run_id)["leak_status"] in ("clean", "leaks")  # random image split: audited either way, never skipped
    no_ids = run_cross_validation(tiny_config(csv, folds=2, gradcam=False, max_iterations=1), store=store)
    assert store.run(no_ids.run_id)["leak_status"] == "unchecked"


def test_fold_count_must_match_the_fold_column(tmp_path):
    csv = _manifest(tmp_path / "data", [1 + (i // 2) % 2 for i in range(16)])
    with pytest.raises(CxrError, match="holds 2 folds but folds=3"):
        run_cross_validation(tiny_config(csv, group_column="patient", fold_column="fold", folds=3), store=Store(tmp_path / "runs"))


@pytest.mark.slow
def test_a_cohort_flow_next_to_the_manifest_is_stored_with_the_data_set(tmp_path):
    csv = _manifest(tmp_path / "data", [1] * 16)
    flow = {"source": "mimic", "steps": [{"name": "labels", "n_images": 20, "n_studies": 20, "n_patients": 10, "n_removed": 0, "reason": ""},
                                         {"name": "view", "n_images": 16, "n_studies": 16, "n_patients": 8, "n_removed": 4, "reason": "lateral"}]}
    csv.with_name("manifest.flow.json").write_text(json.dumps(flow))
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(csv, group_column="patient", folds=2, gradcam=False, max_iterations=1), store=store)
    stored = store.query("SELECT flow FROM datasets WHERE dataset_id = ?", [store.run(result.run_id)["dataset_id"]])["flow"].iloc[0]
    assert json.loads(stored) == flow
    from core.results.export import run_report_html

    assert "Cohort selection" in run_report_html(store.runs_dir, result.run_id, gallery_size=0) and "lateral" in run_report_html(
        store.runs_dir, result.run_id, gallery_size=0)
