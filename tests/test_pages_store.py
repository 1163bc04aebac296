"""Every page on a store that was built, not trained (bench/dashboard.py's builder, at a small size): quick enough for
`pytest -m "not slow"`, and the pages' read side (lists, records, caches, fragments) exercised on many runs at once.

The page tests that train their own runs (tests/test_pages.py) stay in the full suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from bench.dashboard import build_store

PAGES = Path(__file__).resolve().parent.parent / "pages"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """12 finished runs (a sweep of 3 among them), 7 unfinished ones, 40 images each; no fold models (Predict lists none)."""
    return build_store(tmp_path_factory.mktemp("built"), runs=12, predictions=480, model_runs=0)


@pytest.fixture
def env(built, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(built.runs_dir))
    monkeypatch.setenv("CXR_DEMO_DIR", str(built.demo_dir))
    return built


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / name), default_timeout=60)


def shown(at: AppTest) -> list[str]:
    return [e.value for e in at.exception] + [e.value for e in at.error]


@pytest.mark.parametrize("name", sorted(p.name for p in PAGES.glob("*.py") if p.name != "__init__.py"))
def test_every_page_renders_on_a_store_of_many_runs_without_an_error(env, name):
    at = page(name).run()
    assert not shown(at)


def test_the_home_page_lists_every_run_by_name_first(env):
    table = page("home.py").run().dataframe[0].value
    assert table.columns[0] == "name" and len(table) == env.sizes["runs"]
    assert set(env.finished) <= set(table["run"]) and table["AUC % (pooled)"].between(0, 100).sum() == env.sizes["finished_runs"]


def test_the_runs_threshold_slider_changes_the_rates(env):
    at = page("2_Runs.py").run()
    before = next(df.value for df in at.dataframe if "measure" in df.value.columns).set_index("measure")
    at.slider(key="runs_threshold").set_value(0.99).run()
    after = next(df.value for df in at.dataframe if "measure" in df.value.columns).set_index("measure")
    assert not shown(at) and after.loc["specificity", "value"] != before.loc["specificity", "value"]
    assert after.loc["specificity", "value"].endswith(" %")


def test_compare_puts_two_chosen_runs_in_table_3_under_their_names(env):
    at = page("3_Compare.py").run()
    at.radio(key="compare_mode").set_value("chosen runs").run()
    at.multiselect(key="compare_runs").set_value(env.finished[:2]).run()
    assert not shown(at)
    table = next(df.value for df in at.dataframe if "DeLong p vs first" in df.value.columns)
    assert len(table) == 2 and all(not name.startswith("2026") for name in table.index)  # names, not ids


def test_a_sweep_is_compared_as_a_whole(env):
    at = page("3_Compare.py").run()
    assert at.radio(key="compare_mode").value == "a sweep"
    table = next(df.value for df in at.dataframe if "DeLong p vs first" in df.value.columns)
    assert len(table) == 3


def test_the_gallery_filters_by_outcome(env):
    at = page("4_Grad-CAM.py").run()
    at.multiselect(key="cam_outcomes").set_value(["FN"]).run()
    assert not shown(at)
    captions = [img.caption for element in at.main if type(element).__name__ == "Image" for img in element.proto.imgs]
    outcomes = {c.split(" · ")[0] for c in captions if " · p(positive) " in c}
    assert outcomes == {"FN"}


def test_the_data_pages_fold_preview_follows_the_folds(env):
    at = page("0_Data.py").run()
    at.number_input(key="data_folds").set_value(4).run()
    preview = next(df.value for df in at.dataframe if df.value.index.name == "fold")
    assert not shown(at) and len(preview) == 4


def test_a_renamed_run_shows_its_new_name_at_once_though_run_lists_are_cached(tmp_path, monkeypatch):
    """Lists are cached on the store's version: any committed write (here a rename) must show on the next rerun."""
    from core.results.store import Store

    built = build_store(tmp_path, runs=3, predictions=60, model_runs=0)
    monkeypatch.setenv("CXR_RUNS_DIR", str(built.runs_dir))
    at = page("2_Runs.py").run()
    run_id = at.selectbox(key="runs_run").value
    Store(built.runs_dir).update_run(run_id, name="renamed by another tab")
    at.run()
    assert at.selectbox(key="runs_run").format_func(run_id).startswith("renamed by another tab")


def _confusion(at: AppTest) -> dict:
    """The Runs page's confusion matrix as counts, read from the figure the browser gets."""
    import json

    for element in at.main:
        if type(element).__name__ == "UnknownElement" and element.type == "plotly_chart":
            spec = json.loads(element.proto.spec)
            heat = next((t for t in spec["data"] if t.get("type") == "heatmap"), None)
            if heat and spec["layout"]["title"]["text"].startswith("At "):
                (tn, fn), (fp, tp) = [[int(cell.split("<br>")[0]) for cell in row] for row in heat["text"]]
                return {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "title": spec["layout"]["title"]["text"]}
    raise AssertionError("no confusion matrix on the page")


def test_the_threshold_drives_the_confusion_matrix(env):
    """One threshold everywhere on Runs: the matrix's counts are the stored predictions called at the slider's value."""
    from core.results.store import Store

    at = page("2_Runs.py").run()
    run_id = at.selectbox(key="runs_run").value
    store = Store(env.runs_dir)
    run = store.run_record(run_id)
    preds = store.scored(run)
    positive = preds["label_index"].to_numpy() == run.positive_index
    for threshold in (0.5, 0.8):
        at.slider(key="runs_threshold").set_value(threshold).run()
        called = preds["prob_positive"].to_numpy() >= threshold
        matrix = _confusion(at)
        assert matrix["title"].startswith(f"At {threshold:.2f}: ")
        assert (matrix["tp"], matrix["fn"], matrix["fp"], matrix["tn"]) == (
            int((called & positive).sum()), int((~called & positive).sum()), int((called & ~positive).sum()), int((~called & ~positive).sum()))


def test_the_runs_table_and_a_runs_predictions_download_as_csv(env):
    """CSV exports as trackers offer them: the (filtered) runs table on Home, a run's out-of-fold predictions on Runs."""
    import io

    import pandas as pd

    from core.dashboard import predictions_csv
    from core.results.store import Store

    at = page("home.py").run()
    at.multiselect(key="home_status").set_value(["finished"]).run()
    shown = at.dataframe[0].value
    assert len(shown) == env.sizes["finished_runs"] and any("of" in c.value and "runs" in c.value for c in at.caption)
    assert not shown.empty and (shown["status"] == "finished").all()

    run_id = env.finished[0]
    csv = pd.read_csv(io.BytesIO(predictions_csv(env.runs_dir, run_id)))
    stored = Store(env.runs_dir).predictions(run_id)
    assert list(csv.columns) == ["image_id", "fold", "true_class", "p_Pleural Effusion", "called_at_0.5"]
    assert len(csv) == len(stored) and csv["fold"].min() == 1 and set(csv["true_class"]) <= {"Normal", "Pleural Effusion"}
    assert not any("group" in c or "patient" in c for c in csv.columns)  # no patient ids in a file that travels


def test_table_3_leads_with_what_a_reader_compares_and_a_sweep_gets_its_parallel_plot(env):
    import json

    at = page("3_Compare.py").run()  # a sweep: learning rate varied
    key = next(df.value for df in at.dataframe if "DeLong p vs first" in df.value.columns)
    assert list(key.columns) == ["learning_rate", "AUC % (95% CI, DeLong)", "sensitivity % (95% CI)", "specificity % (95% CI)",
                                 "DeLong p vs first", "Holm p"]
    full = [df.value for df in at.dataframe if "training time" in df.value.columns]
    assert full and "accuracy % (95% CI)" in full[0].columns  # the rest, on demand
    specs = [json.loads(e.proto.spec) for e in at.main if type(e).__name__ == "UnknownElement" and e.type == "plotly_chart"]
    parallel = next(s for s in specs if s["data"][0]["type"] == "parcoords")
    assert [d["label"] for d in parallel["data"][0]["dimensions"]] == ["learning_rate", "AUC % (pooled)"]
