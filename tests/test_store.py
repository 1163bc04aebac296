"""The store under concurrency: a dashboard reading in a loop while a run writes sees no error and loses no row."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core import CxrError
from core.results.store import Store

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent(
    """
    import sys, time
    from core.results.store import Store, IterationBuffer
    store = Store(sys.argv[1])
    store.create_run("live", status="running")
    buf = IterationBuffer(store, interval_s=0.05)
    for i in range(1, int(sys.argv[2]) + 1):
        buf.add({"run_id": "live", "fold": 0, "phase": "train", "iteration": i, "epoch": 1,
                 "loss": 1.0 / i, "accuracy": 0.5, "lr": 1e-4, "elapsed_s": i * 0.01})
        time.sleep(0.002)
    buf.flush(force=True)
    store.update_run("live", status="finished")
    """
)


@pytest.mark.slow
def test_dashboard_reads_while_a_run_writes_without_errors_or_lost_rows(tmp_path):
    store = Store(tmp_path)
    store.create_run("seed")  # the file exists before the reader starts
    n_rows = 1500
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(n_rows)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    reads, errors, seen = 0, [], []
    deadline = time.monotonic() + 120
    while (writer.poll() is None or reads < 200) and time.monotonic() < deadline:
        try:
            store.list_runs()
            seen.append(len(store.iterations("live")))
            reads += 1
        except Exception as exc:  # any error here is a failure of the design
            errors.append(repr(exc))
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    assert errors == [] and reads >= 200
    assert seen == sorted(seen)  # rows only ever appear, never vanish
    final = store.iterations("live")
    assert len(final) == n_rows and final["iteration"].tolist() == list(range(1, n_rows + 1))
    assert store.run("live")["status"] == "finished"


def test_reading_an_absent_store_is_empty_not_an_error(tmp_path):
    assert Store(tmp_path / "nothing").list_runs().empty


def test_unknown_run_is_a_clear_error(tmp_path):
    Store(tmp_path).create_run("a")
    with pytest.raises(CxrError, match="no run 'b'"):
        Store(tmp_path).run("b")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_a_read_only_runs_folder_says_so(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(CxrError, match="not writable"):
        Store(tmp_path).create_run("x")


def test_a_file_where_the_runs_folder_should_be_says_so(tmp_path):
    (tmp_path / "runs").write_text("oops")
    with pytest.raises(CxrError, match="cannot create runs folder"):
        Store(tmp_path / "runs").create_run("x")


def _version_1_store(folder: Path) -> None:
    """A store as the first release wrote it, holding one finished run 'old'."""
    import duckdb

    from core.results.store import _SCHEMA_V1

    con = duckdb.connect(str(folder / "runs.duckdb"))
    con.execute(_SCHEMA_V1)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO runs (run_id, status, synthetic, preset) VALUES ('old', 'finished', false, 'quick')")
    con.close()


def test_a_version_1_store_is_migrated_forward(tmp_path):
    from core.results.store import SCHEMA_VERSION

    _version_1_store(tmp_path)
    store = Store(tmp_path)
    store.update_run("old", notes="still here")  # any write migrates first
    assert store.schema_version() == SCHEMA_VERSION
    assert store.run("old")["notes"] == "still here" and "pointing_game" in store.run("old")
    assert store.cams("old").empty


def test_a_dashboard_reading_an_old_store_first_migrates_it(tmp_path):
    """After an upgrade the first access is often a page reading the runs list, not a writer: it must not fail on new columns."""
    from core.dashboard import runs_overview
    from core.results.store import SCHEMA_VERSION

    _version_1_store(tmp_path)
    table = runs_overview(tmp_path)
    assert table["run_id"].tolist() == ["old"] and Store(tmp_path).schema_version() == SCHEMA_VERSION


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    Store(tmp_path).create_run("a")
    import duckdb

    con = duckdb.connect(str(tmp_path / "runs.duckdb"))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(CxrError, match="newer cxr-transfer"):
        Store(tmp_path).create_run("b")
