"""The dashboard benchmark (`python -m core bench --dashboard`) at a tiny size: it builds the store it is asked for, times a page
and an interaction, prints its table and writes the documented JSON; and `--app-root` runs another checkout's pages."""

from __future__ import annotations

import json
import os

import pytest

from bench.dashboard import JSON_KEYS, REPO, STORE_KEYS, build_store
from core.__main__ import main


def test_store_has_the_asked_sizes_and_rows_the_pages_can_use(tmp_path):
    import numpy as np

    from core.results.store import Store

    built = build_store(tmp_path, runs=6, predictions=300, model_runs=0)
    s = built.sizes
    assert s["finished_runs"] == 6 and s["predictions"] == 300 and s["predictions_per_run"] == 50 and s["images"] == 50
    assert s["runs"] == 6 + 7 and s["sweeps"] == 1 and s["model_runs"] == 0 and s["file_mb"] > 0
    assert s["folds"] >= 6 * 10 and s["splits"] == 300 and 0 < s["cams"] <= 6 * 2 * 100
    store = Store(built.runs_dir)
    assert store.schema_version() >= 4  # made by the code's own migrations
    run = store.run(built.finished[0])
    assert run["synthetic"] and run["status"] == "finished" and json.loads(run["classes"]) == ["Normal", "Pleural Effusion"]
    assert json.loads(run["config"])["folds"] == 10 and 0.5 < run["auc"] <= 1
    cams = store.cams(built.finished[0])
    with np.load(built.runs_dir / cams["artifact"].iloc[0]) as npz:  # the index points at real heat maps of the engine's format
        assert npz["predicted"].dtype == np.uint8 and int(cams["slot"].max()) < len(npz["predicted"])
    images = store.images(run["dataset_id"])
    assert all(os.path.isfile(p) for p in images["path"])


@pytest.mark.slow
def test_tiny_benchmark_times_the_runs_page_and_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "dash.json"
    assert main(["bench", "--dashboard", "--tiny", "--runs", "6", "--predictions", "300", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(JSON_KEYS) <= set(result) and result["kind"] == "dashboard" and set(STORE_KEYS) <= set(result["store"])
    assert result["store"]["finished_runs"] == 6 and result["store"]["predictions"] == 300
    assert result["app_root"] == str(REPO) and len(result["load_before"]) == 3
    (page,) = result["pages"]
    assert page["page"] == "2_Runs.py" and page["error"] is None and page["first_render_s"] > 0 and page["cold_render_s"] > 0
    (slider,) = page["interactions"]
    assert slider["seconds"] > 0 and slider["error"] is None and slider["met"] in (True, False) and slider["target_s"] == 0.3
    assert "2_Runs.py" in printed and "threshold slider" in printed and "first render s" in printed


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@pytest.mark.slow
def test_app_root_times_another_checkouts_pages_in_a_subprocess(tmp_path):
    """A checkout elsewhere (here: links to this one's core and pages) is timed by a child that imports its core, not ours."""
    from bench.dashboard import run_dashboard_bench

    other = tmp_path / "checkout"
    other.mkdir()
    for name in ("core", "pages"):
        (other / name).symlink_to(REPO / name)
    result = run_dashboard_bench(runs=3, predictions=60, app_root=other, pages=("1_Train.py",), sessions=1, model_runs=0)
    assert result["app_root"] == str(other) and result["store"]["finished_runs"] == 3
    (page,) = result["pages"]
    assert page["page"] == "1_Train.py" and page["error"] is None and page["first_render_s"] > 0
