"""Results by subgroup: bands and categories only, AUCs and intervals as scikit-learn and DeLong give them, small groups
flagged, and the whole path from a CSV manifest's columns to the report's JSON and the Runs page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core import CxrError
from core.data.subgroups import age_band, parse_columns, sex
from core.results.stats import at_threshold, auc_delong
from core.results.subgroups import subgroup_rows


def test_ages_are_kept_as_bands_and_sex_in_words():
    assert [age_band(v) for v in ("17", "18", "39.9", "40", "67", "80", "104", "", "n/a", "-3", "200", "60-79", "058Y")] == [
        "0-17", "18-39", "18-39", "40-59", "60-79", "80+", "80+", "unknown", "unknown", "unknown", "unknown", "60-79", "40-59"]
    assert [sex(v) for v in ("F", "Female", "m", "MALE", "", "other")] == ["female", "female", "male", "male", "unknown", "other"]


def test_subgroup_columns_are_checked_against_the_manifest():
    assert parse_columns("site", ["path", "label", "sex", "age", "site"]) == ["sex", "age", "site"]
    assert parse_columns("", ["path", "label", "age", "age_band"]) == ["age_band"]  # one age variable
    with pytest.raises(CxrError, match="subgroup column\\(s\\) 'scanner' not in the manifest"):
        parse_columns("scanner", ["path", "label"])


def test_each_subgroup_has_the_auc_and_interval_of_its_own_images_and_a_test_against_the_rest():
    rng = np.random.default_rng(5)
    n = 300
    y = rng.random(n) < 0.4
    site = np.where(rng.random(n) < 0.5, "A", "B")
    s = np.clip(y * np.where(site == "A", 0.35, 0.1) + rng.normal(0.4, 0.2, n), 0, 1)  # better at site A
    ids = [f"i{k}" for k in range(n)]
    levels = pd.DataFrame({"image_id": ids, "variable": "site", "level": site})
    rows = {r["level"]: r for r in subgroup_rows(y, s, ids, levels)}
    for lvl in ("A", "B"):
        sel = site == lvl
        r = rows[lvl]
        assert r["n"] == sel.sum() and r["n_positive"] == y[sel].sum() and not r["small"]
        assert r["auc"] == pytest.approx(roc_auc_score(y[sel], s[sel]))
        ci = auc_delong(y[sel], s[sel])
        assert (r["auc_ci_low"], r["auc_ci_high"]) == pytest.approx((ci.low, ci.high))
        rates = at_threshold(y[sel], s[sel], 0.5)
        assert (r["sensitivity"], r["specificity_ci_low"]) == pytest.approx((rates["sensitivity"], rates["specificity_ci_low"]))
        rest = auc_delong(y[~sel], s[~sel])
        z = (ci.auc - rest.auc) / math.sqrt(ci.se ** 2 + rest.se ** 2)
        assert r["p_vs_rest"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    assert rows["A"]["auc"] > rows["B"]["auc"] and rows["A"]["p_vs_rest"] < 0.05


def test_small_and_one_class_groups_are_flagged_not_hidden():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    s = np.linspace(0.9, 0.0, 10)
    ids = [str(k) for k in range(10)]
    levels = pd.DataFrame({"image_id": ids, "variable": "view", "level": ["PA"] * 6 + ["AP"] * 3 + ["LL"]})
    rows = {r["level"]: r for r in subgroup_rows(y, s, ids, levels)}
    assert set(rows) == {"PA", "AP", "LL"}
    assert rows["PA"]["small"] and rows["PA"]["auc"] == 1.0
    assert rows["LL"]["auc"] is None and rows["LL"]["n_positive"] == 0 and rows["LL"]["small"]


@pytest.mark.slow
def test_a_csv_manifests_subgroups_reach_the_report_json_and_the_runs_page(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import blob_dataset, tiny_config
    from core.results.report import table3, to_json
    from core.results.store import Store
    from core.training.engine import run_cross_validation

    data = blob_dataset(tmp_path / "blobs", n_per_class=10)
    files = sorted(data.rglob("*.png"))
    manifest = pd.DataFrame({"path": [str(f) for f in files], "label": [f.parent.name for f in files],
                             "sex": ["F", "M"] * 10, "age": [str(25 + 4 * k) for k in range(20)],
                             "site": ["north"] * 10 + ["south"] * 10, "view": ["PA"] * 20})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    store = Store(tmp_path / "runs")
    cfg = tiny_config(str(tmp_path / "manifest.csv"), source="csv", subgroup_columns="site", folds=2, max_iterations=2, gradcam=False)
    result = run_cross_validation(cfg, store=store, run_id="sg")
    row = json.loads(to_json(table3(store, [result.run_id])))[0]
    got = {(g["variable"], g["level"]): g for g in row["subgroups"]}
    assert [v for v in dict.fromkeys(g["variable"] for g in row["subgroups"])] == ["sex", "age band", "site", "view"]
    assert got[("sex", "female")]["n"] == 10 and got[("site", "south")]["n"] == 10 and got[("view", "PA")]["n"] == 20
    assert {lvl for (v, lvl) in got if v == "age band"} == {"18-39", "40-59", "60-79", "80+"}  # ages 25-101, as bands
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "2_Runs.py"), default_timeout=120).run()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "variable" in df.value.columns)
    assert set(table["variable"]) == {"sex", "age band", "site", "view"}
