"""The home page lists what the store holds (AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CXR_DEMO_DIR", str(tmp_path / "demo"))
    return tmp_path


def test_home_without_runs_or_demo_data_offers_to_create_it(dirs):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
    assert at.button(key="home_make_demo")


def test_home_lists_a_stored_run(dirs):
    store = Store(dirs / "runs")
    store.create_run("20260101-000000-abcdef", status="finished", preset="quick", synthetic=True, n_images=40, folds=5,
                     auc=0.9123, accuracy=0.85, sensitivity=0.8, specificity=0.9, train_seconds=12.5, weights_used="none")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    table: pd.DataFrame = at.dataframe[0].value
    assert table["run"].tolist() == ["20260101-000000-abcdef"]
    assert table["AUC % (pooled)"].tolist() == [91.23] and table["data"].tolist() == ["synthetic demo"]
