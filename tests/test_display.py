"""How the pages show values (pages/ui/display.py): one unit per measure everywhere, missing values marked, names not ids first."""

from __future__ import annotations

import math

import pandas as pd

from core.results.records import RunSummary
from pages.ui import display


def test_auc_reads_as_the_study_reports_it_and_rates_as_percentages():
    assert display.auc(0.93534) == "93.53 %"
    assert display.pct(0.9042) == "90.4 %" and display.pct(1.0) == "100.0 %"
    assert display.interval(0.881, 0.923) == "88.1-92.3 %" and display.interval(0.9, 0.95, 2) == "90.00-95.00 %"


def test_a_missing_value_is_a_dash_and_a_missing_interval_is_empty():
    assert display.pct(None) == display.auc(math.nan) == "–"
    assert display.interval(math.nan, 0.5) == "" and display.interval(None, None) == ""


def test_a_run_is_labelled_by_name_auc_and_preset():
    run = RunSummary("20261204-145551-7babff", "quick · lr 1e-4", "finished", "", 0.9042, 10, None, None, "")
    assert display.run_label(run) == "quick · lr 1e-4 · AUC 90.42 % · custom"
    assert display.run_label(RunSummary("r", "r", "running", "paper", None, 10, None, None, "")) == "r · paper"


def test_the_runs_table_leads_with_names_and_keeps_percentages_sortable():
    runs = pd.DataFrame({"run_id": ["r1"], "name": ["baseline"], "status": ["finished"], "preset": [""], "tags": ["a, b"],
                         "synthetic": [True], "n_images": [400], "folds": [10], "auc": [0.91234], "accuracy": [0.85],
                         "sensitivity": [0.8], "specificity": [None], "train_seconds": [12.34], "weights_used": ["none"],
                         "device": ["cpu"], "created_at": [pd.Timestamp("2026-12-04")]})
    table = display.runs_table(runs)
    assert table.columns[0] == "name" and table.columns[-1] == "run"
    assert table["AUC % (pooled)"].tolist() == [91.23] and table["preset"].tolist() == ["custom"]
    assert math.isnan(table["specificity %"][0]) and table["data"].tolist() == ["synthetic demo"]
    # a run created but not yet described (no synthetic flag: NULL, read as pandas' NA) is not an error
    unknown = display.runs_table(runs.assign(synthetic=pd.array([pd.NA], dtype="boolean")))
    assert unknown["data"].tolist() == ["user data"]


def test_the_highlight_is_not_a_dark_fill():
    """It marks Compare's differing settings on the light and the dark theme (a fixed dark fill vanished on dark)."""
    assert display.HIGHLIGHT["background-color"].startswith("rgba(") and "0.28)" in display.HIGHLIGHT["background-color"]


def test_the_runs_table_filters_by_name_or_tag_status_preset_and_data():
    table = pd.DataFrame({"name": ["baseline", "quick · lr 1e-4", "Paper repro"], "tags": ["demo", "", "MIMIC, final"],
                          "status": ["finished", "failed", "finished"], "preset": ["quick", "quick", "paper"],
                          "data": ["synthetic demo", "synthetic demo", "user data"]})
    assert display.filter_runs(table)["name"].tolist() == table["name"].tolist()  # nothing chosen: all
    assert display.filter_runs(table, text="LR 1E")["name"].tolist() == ["quick · lr 1e-4"]  # any case, in names
    assert display.filter_runs(table, text="mimic")["name"].tolist() == ["Paper repro"]  # and in tags
    assert display.filter_runs(table, statuses=["finished"], presets=["quick"])["name"].tolist() == ["baseline"]
    assert display.filter_runs(table, data=["user data"], text="demo").empty


def test_the_colour_scale_runs_from_low_to_high_in_the_overlays_colours():
    import numpy as np

    from core.results.overlay import colour_bar, colormap

    bar = colour_bar(width=256, height=4)
    assert bar.shape == (4, 256, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[0, 0], colormap(np.array([0.0]))[0])  # dark purple: low
    np.testing.assert_array_equal(bar[0, -1], colormap(np.array([1.0]))[0])  # yellow: high
