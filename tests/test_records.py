"""The read side: typed run records from the store, each derived fact defined once, one query for many runs,
and pages that do not load torch until they run a model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.config import RunConfig
from core.results.records import RunRecord, negative_class
from core.results.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _add_runs(store: Store, n: int, *, classes=("Normal", "Effusion"), status: str = "finished") -> list[str]:
    ids = []
    for k in range(n):
        run_id = f"r{k:03d}"
        store.create_run(run_id, name=f"run {k}", preset="quick", config=RunConfig(folds=3, image_size=64).to_json(),
                         classes=json.dumps(list(classes)), positive_class=classes[-1], n_images=40, folds=3, synthetic=True,
                         dataset_id="d")
        store.update_run(run_id, status=status, auc=0.5 + k / (2 * n), accuracy=0.7)
        ids.append(run_id)
    return ids


def test_a_run_record_carries_its_typed_config_and_derived_facts(tmp_path):
    store = Store(tmp_path / "runs")
    _add_runs(store, 1)
    record = store.run_record("r000")
    assert isinstance(record.config, RunConfig) and record.config.image_size == 64 and record.config.folds == 3
    assert record.classes == ("Normal", "Effusion") and record.positive_index == 1 and record.negative_class == "Normal"
    assert record.auc == pytest.approx(0.5) and record.train_seconds is None  # NULL reads as None, never NaN
    assert record.error is None and record.tags == "" and record.synthetic is True
    from pages.ui.display import run_label

    assert run_label(record) == run_label(store.run_summaries()[0]) == "run 0 · AUC 50.00 % · quick"


def test_the_negative_class_has_one_name_everywhere():
    assert negative_class(["Normal", "Effusion"], "Effusion") == "Normal"
    assert negative_class(("Cardiomegaly", "Effusion", "No Finding"), "Effusion") == "not Effusion"


def test_a_stored_config_with_settings_this_version_does_not_know_still_reads(tmp_path):
    row = {"run_id": "x", "config": json.dumps({"image_size": 96, "a_setting_from_the_future": 1}), "classes": '["a", "b"]',
           "positive_class": "b", "status": "finished"}
    record = RunRecord.from_row(row)
    assert record.config.image_size == 96 and record.name == "x" and record.auc is None


def _connections(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = duckdb.connect

    def counting(*args, **kwargs):
        opened.append(str(args[0]) if args else "")
        return real(*args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counting)
    return opened


@pytest.mark.parametrize("n_runs", [3, 40])
@pytest.mark.slow
def test_choosing_among_runs_costs_one_query_whatever_the_store_holds(tmp_path, monkeypatch, n_runs):
    """The Predict page opened the store once per finished run (55 s for 2,500 runs); listing is now one query."""
    from core.dashboard import finished_runs, predictable_runs

    store = Store(tmp_path / "runs")
    ids = _add_runs(store, n_runs)
    for k in range(3):  # one run kept its fold models
        (store.run_dir(ids[0]) / f"fold_{k}.pt").parent.mkdir(parents=True, exist_ok=True)
        (store.run_dir(ids[0]) / f"fold_{k}.pt").write_bytes(b"")
    opened = _connections(monkeypatch)
    options = finished_runs(store.runs_dir)
    predictable = predictable_runs(store.runs_dir)
    assert len(options) == n_runs and [r.run_id for r in predictable] == [ids[0]]
    assert len(opened) == 2  # one each, for 3 runs as for 40


@pytest.mark.slow
def test_the_report_row_names_the_negative_class_from_the_record(tmp_path):
    from conftest import blob_dataset, tiny_config
    from core.training.engine import run_cross_validation
    from core.results.report import run_row

    data = blob_dataset(tmp_path / "d", n_per_class=6)
    store = Store(tmp_path / "runs")
    run_id = run_cross_validation(tiny_config(data, max_iterations=1, folds=2, batch_size=4, gradcam=False), store=store).run_id
    row, _, _ = run_row(store, run_id)
    record = store.run_record(run_id)
    assert row["negative_class"] == record.negative_class == "Normal" and row["positive_class"] == "Effusion"
    assert row["config"]["batch_size"] == 4  # the stored config, read back through RunConfig


def _page_imports(page: Path) -> list[str]:
    tree = ast.parse(page.read_text())
    return [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py")))
@pytest.mark.slow
def test_a_page_does_not_load_torch_by_importing_what_it_uses(page):
    """Opening a page must not cost torch's import (seconds): training runs in a job process, Predict imports it lazily.
    Nor scikit-learn's or scipy.stats' (0.9 s together on the first visit): the statistics use numpy and the standard library."""
    heavy = ["torch", "sklearn", "scipy.stats"]
    code = "\n".join(_page_imports(ROOT / "pages" / page) + ["import sys", f"print([m for m in {heavy!r} if m in sys.modules])"])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
