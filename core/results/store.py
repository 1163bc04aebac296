"""The DuckDB store at `<runs-dir>/runs.duckdb`: schema, migrations and every SQL statement of the project.

Concurrency (../shared/ARCHITECTURE.md): a DuckDB file opened read-write by one process
cannot be opened at all by another. So nobody holds a connection for long: every write opens,
works in one short transaction, and closes; a lock conflict is retried with back-off. Writers
batch their rows (IterationBuffer) so a run opens the file every couple of seconds, not every
iteration. A reader opens once per batch of reads (`Store.reading()`, e.g. one page's
comparison): opening a 250 MB file costs about 30 ms, and a comparison of three runs reads 20
times; the batch lasts well under the writers' lock timeout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import pandas as pd

from core import CxrError
from core.results.records import RunRecord, RunSummary

SCHEMA_VERSION = 9
DB_NAME = "runs.duckdb"
RUNS_DIR_ENV = "CXR_RUNS_DIR"

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id VARCHAR PRIMARY KEY, source VARCHAR, root VARCHAR, synthetic BOOLEAN,
    n_images INTEGER, n_excluded INTEGER, classes VARCHAR, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS images (
    dataset_id VARCHAR, image_id VARCHAR, path VARCHAR, label VARCHAR, group_id VARCHAR, view VARCHAR,
    mask_path VARCHAR, excluded_reason VARCHAR, content_hash VARCHAR, PRIMARY KEY (dataset_id, image_id));
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, name VARCHAR, sweep_id VARCHAR, preset VARCHAR, status VARCHAR,
    created_at TIMESTAMP, started_at TIMESTAMP, finished_at TIMESTAMP, config VARCHAR, dataset_id VARCHAR,
    synthetic BOOLEAN, code_version VARCHAR, device VARCHAR, torch_version VARCHAR, torchvision_version VARCHAR,
    weights_used VARCHAR, weights_message VARCHAR, classes VARCHAR, positive_class VARCHAR, n_images INTEGER,
    folds INTEGER, grouped BOOLEAN, train_seconds DOUBLE, total_seconds DOUBLE,
    accuracy DOUBLE, sensitivity DOUBLE, specificity DOUBLE, auc DOUBLE, auc_mean_folds DOUBLE,
    metrics VARCHAR, error VARCHAR, notes VARCHAR, tags VARCHAR, pid INTEGER);
CREATE TABLE IF NOT EXISTS splits (run_id VARCHAR, image_id VARCHAR, fold INTEGER, PRIMARY KEY (run_id, image_id));
CREATE TABLE IF NOT EXISTS folds (
    run_id VARCHAR, fold INTEGER, status VARCHAR, n_train INTEGER, n_test INTEGER, iterations INTEGER,
    epochs DOUBLE, train_seconds DOUBLE, eval_seconds DOUBLE, accuracy DOUBLE, sensitivity DOUBLE,
    specificity DOUBLE, auc DOUBLE, confusion VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP,
    PRIMARY KEY (run_id, fold));
CREATE TABLE IF NOT EXISTS iterations (
    run_id VARCHAR, fold INTEGER, phase VARCHAR, iteration INTEGER, epoch INTEGER, loss DOUBLE,
    accuracy DOUBLE, lr DOUBLE, elapsed_s DOUBLE, PRIMARY KEY (run_id, fold, phase, iteration));
CREATE TABLE IF NOT EXISTS predictions (
    run_id VARCHAR, image_id VARCHAR, fold INTEGER, label_index INTEGER, pred_index INTEGER,
    prob_positive DOUBLE, probs DOUBLE[], PRIMARY KEY (run_id, image_id));
"""

# v2: Grad-CAM index (heat maps live in runs/<run_id>/cams/fold_<k>.npz) and run-level localisation.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS cams (
    run_id VARCHAR, image_id VARCHAR, fold INTEGER, target VARCHAR, target_class INTEGER, artifact VARCHAR,
    slot INTEGER, outcome VARCHAR, prob_positive DOUBLE, has_mask BOOLEAN, pointing_hit BOOLEAN,
    pointing_chance DOUBLE, energy_in_mask DOUBLE, mask_fraction DOUBLE, peak_y INTEGER, peak_x INTEGER,
    PRIMARY KEY (run_id, image_id, target));
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pointing_game DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pointing_chance DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS energy_in_mask DOUBLE;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS energy_chance DOUBLE;
"""

# v3: the leakage audit of the split each run used (status: clean | leaks | unchecked, and its sentence),
# and the cohort flow of data sets made by `python -m core cohort`.
_SCHEMA_V3 = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS leak_status VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS leakage VARCHAR;
ALTER TABLE datasets ADD COLUMN IF NOT EXISTS flow VARCHAR;
"""

# v4: who runs a run, beyond its pid (a pid can be reused after a crash): the host and the process start token
# (core/jobs/lifecycle.py), and how many times it was resumed.
_SCHEMA_V4 = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid_start VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS resumes INTEGER;
"""

# v5: on which machine each fold trained (a Ray run spreads its folds over a cluster's nodes).
_SCHEMA_V5 = """
ALTER TABLE folds ADD COLUMN IF NOT EXISTS node VARCHAR;
"""

# v6: subgroup variables of each image (core/data/subgroups.py: bands and categories only), for results by subgroup.
_SCHEMA_V6 = """
CREATE TABLE IF NOT EXISTS subgroups (
    dataset_id VARCHAR, image_id VARCHAR, variable VARCHAR, level VARCHAR, PRIMARY KEY (dataset_id, image_id, variable));
"""

# v7: external validations of a run (core/training/validate.py): the evaluation and its per-image predictions.
_SCHEMA_V7 = """
CREATE TABLE IF NOT EXISTS evaluations (
    evaluation_id VARCHAR PRIMARY KEY, run_id VARCHAR, name VARCHAR, dataset_id VARCHAR, synthetic BOOLEAN,
    created_at TIMESTAMP, seconds DOUBLE, artifact VARCHAR, classes VARCHAR);
CREATE TABLE IF NOT EXISTS evaluation_predictions (
    evaluation_id VARCHAR, image_id VARCHAR, label_index INTEGER, prob_positive DOUBLE, PRIMARY KEY (evaluation_id, image_id));
"""

# v8: repeated cross-validation (`repeats`): the splits and out-of-fold predictions of the second and later repeats.
# The first repeat stays in `splits` and `predictions`, so every statistic a run reports is the first repeat's (a run
# with repeats=1 is stored exactly as before); fold numbers run on across repeats (fold g is fold g % k of repeat g // k),
# so `folds` and `iterations` hold every repeat's folds under their own numbers.
_SCHEMA_V8 = """
CREATE TABLE IF NOT EXISTS repeat_splits (run_id VARCHAR, repeat INTEGER, image_id VARCHAR, fold INTEGER, PRIMARY KEY (run_id, repeat, image_id));
CREATE TABLE IF NOT EXISTS repeat_predictions (
    run_id VARCHAR, repeat INTEGER, image_id VARCHAR, fold INTEGER, label_index INTEGER, prob_positive DOUBLE,
    PRIMARY KEY (run_id, repeat, image_id));
"""

# v9: clinicians in the loop (core/review/): reviewers' tags of a run's cases, and reader studies (a fixed sample of a
# run's images under opaque case ids, and every read of a case by a reader in a session, exactly once).
_SCHEMA_V9 = """
CREATE TABLE IF NOT EXISTS review_tags (
    run_id VARCHAR, image_id VARCHAR, reviewer VARCHAR, tag VARCHAR, note VARCHAR, tagged_at TIMESTAMP,
    PRIMARY KEY (run_id, image_id, reviewer));
CREATE TABLE IF NOT EXISTS studies (
    study_id VARCHAR PRIMARY KEY, name VARCHAR, run_id VARCHAR, created_at TIMESTAMP, seed INTEGER, n_images INTEGER,
    aided BOOLEAN, threshold DOUBLE, positive_class VARCHAR, negative_class VARCHAR, origin VARCHAR);
CREATE TABLE IF NOT EXISTS study_cases (
    study_id VARCHAR, case_id VARCHAR, image_id VARCHAR, truth BOOLEAN, prob_positive DOUBLE, has_cam BOOLEAN,
    PRIMARY KEY (study_id, case_id));
CREATE TABLE IF NOT EXISTS reads (
    study_id VARCHAR, reader VARCHAR, session VARCHAR, case_id VARCHAR, call INTEGER, confidence INTEGER, seconds DOUBLE,
    read_at TIMESTAMP, PRIMARY KEY (study_id, reader, session, case_id));
"""

MIGRATIONS: dict[int, str] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4, 5: _SCHEMA_V5, 6: _SCHEMA_V6,
                              7: _SCHEMA_V7, 8: _SCHEMA_V8, 9: _SCHEMA_V9}  # version -> SQL that brings version-1 up to it


class DiskFullError(CxrError):
    """The disk holding the runs folder is full: what was committed before stays, the rest can be resumed."""


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left on device" in str(exc).lower()


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class Store:
    """Short-lived connections to one runs folder's DuckDB file."""

    runs_dir: Path
    lock_timeout_s: float = 15.0
    _schema_ready: bool = field(default=False, repr=False)
    _reader: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)  # set inside reading()
    _memo: dict | None = field(default=None, repr=False)  # reads kept for the batch inside reading(): nothing changes there

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)

    @property
    def path(self) -> Path:
        return self.runs_dir / DB_NAME

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open, yield, close; retry while another process holds the file's lock."""
        if not read_only:
            self.ensure_writable()
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                # another process holds the file's lock, or this one has it open the other way (read-only against
                # read-write: DuckDB refuses "a different configuration" in one process) for one short transaction
                busy = "lock" in str(exc).lower() or "different configuration" in str(exc).lower()
                if not busy or time.monotonic() > deadline:
                    raise CxrError(f"cannot open the run store {self.path}: {exc}") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con:
            if not self._schema_ready:
                _migrate(con)
                self._schema_ready = True
            con.begin()
            try:
                yield con
                con.commit()
            except BaseException as exc:
                with contextlib.suppress(duckdb.Error):
                    con.rollback()
                if is_disk_full(exc):  # DuckDB says so in an IOException; the OS in an OSError
                    raise DiskFullError(f"the disk holding {self.runs_dir} is full (no space left on device)") from None
                raise

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """A read-only query; an absent store reads as empty (no runs yet)."""
        with self._read_connection() as con:
            if con is None:
                return pd.DataFrame()
            try:
                return con.execute(sql, params or []).df()
            except duckdb.CatalogException:
                return pd.DataFrame()  # a store created by a writer that has not made its tables yet

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        """Like query, as plain tuples: for listings of thousands of runs, where building a DataFrame costs more than the read."""
        with self._read_connection() as con:
            if con is None:
                return []
            try:
                return con.execute(sql, params or []).fetchall()
            except duckdb.CatalogException:
                return []

    @contextmanager
    def reading(self) -> Iterator["Store"]:
        """Every read inside shares one read-only connection (opened here, closed on leaving); nested calls share the outer one.

        No write may happen inside: DuckDB refuses a read-write connection beside a read-only one in the same process.
        """
        if self._reader is not None:
            yield self
            return
        with self._read_connection() as con:
            self._reader, self._memo = con, {}
            try:
                yield self
            finally:
                self._reader, self._memo = None, None

    def _once(self, key: tuple, read):
        """`read()` once per batch inside reading() (a report asks for the same run's record several times); else every call."""
        if self._memo is None:
            return read()
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    @contextmanager
    def _read_connection(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """The batch's connection inside reading(), else a fresh read-only one; None when there is no store file yet.

        A store written by an older version is brought forward once first (pages read before anyone writes).
        """
        if self._reader is not None:
            yield self._reader
            return
        if not self.path.exists():
            yield None
            return
        with self.connect(read_only=True) as con:
            if self._schema_ready or _stored_version(con) >= SCHEMA_VERSION:
                self._schema_ready = True
                yield con
                return
        with self.transaction():
            pass
        with self.connect(read_only=True) as con:
            yield con

    def version(self) -> tuple[int, ...]:
        """Changes whenever a write commits (the file or its write-ahead log changes): a cache key for what was read.

        A stat of two files, no connection: a page can ask on every rerun.
        """
        out: list[int] = []
        for file in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                stat = file.stat()
            except FileNotFoundError:
                out += [0, 0]
            else:
                out += [stat.st_mtime_ns, stat.st_size]
        return tuple(out)

    def ensure_writable(self) -> None:
        """Create the runs folder or say, as a CxrError, why it cannot be written (called before any long work)."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CxrError(f"cannot create runs folder {self.runs_dir}: {exc.strerror}; choose another with --runs-dir") from None
        if not os.access(self.runs_dir, os.W_OK):
            raise CxrError(f"runs folder {self.runs_dir} is not writable; choose another with --runs-dir or ${RUNS_DIR_ENV}")

    # -- writes --------------------------------------------------------------------------
    def save_dataset(self, dataset_id: str, *, source: str, root: str, synthetic: bool, table: pd.DataFrame, classes: list[str],
                     flow: dict | None = None) -> None:
        images = table.rename(columns={"group": "group_id"}).assign(dataset_id=dataset_id)
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO datasets (dataset_id, source, root, synthetic, n_images, n_excluded, classes, created_at, flow) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [dataset_id, source, root, synthetic, len(table), int((table["excluded_reason"] != "").sum()), json.dumps(classes), now(),
                 json.dumps(flow) if flow else None],
            )
            con.register("new_images", images)
            con.execute(
                "INSERT OR REPLACE INTO images SELECT dataset_id, image_id, path, label, group_id, view, mask_path, "
                "excluded_reason, content_hash FROM new_images"
            )
            con.unregister("new_images")
            # the manifest's subgroup columns (`sg:<variable>`), one row per image and variable
            columns = [c for c in table.columns if c.startswith("sg:")]
            con.execute("DELETE FROM subgroups WHERE dataset_id = ?", [dataset_id])
            if columns:
                long = table.melt(id_vars=["image_id"], value_vars=columns, var_name="variable", value_name="level")
                long = long.assign(dataset_id=dataset_id, variable=long["variable"].str.removeprefix("sg:"))
                con.register("new_subgroups", long[["dataset_id", "image_id", "variable", "level"]])
                con.execute("INSERT OR REPLACE INTO subgroups SELECT * FROM new_subgroups")
                con.unregister("new_subgroups")

    def create_run(self, run_id: str, **fields_: Any) -> None:
        row = {"run_id": run_id, "status": "running", "created_at": now(), **fields_}
        cols = ", ".join(row)
        with self.transaction() as con:
            con.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))

    def update_run(self, run_id: str, **fields_: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields_)
        with self.transaction() as con:
            con.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*fields_.values(), run_id])

    def save_splits(self, run_id: str, image_ids: list[str], folds) -> None:
        """Fold numbers per image: a list (one split), or a (repeats, N) array (the first repeat in `splits`, the rest in
        `repeat_splits`)."""
        rows = np.atleast_2d(np.asarray(folds, dtype=np.int64))
        with self.transaction() as con:
            con.register("new_splits", pd.DataFrame({"run_id": run_id, "image_id": image_ids, "fold": rows[0]}))
            con.execute("INSERT OR REPLACE INTO splits SELECT run_id, image_id, fold FROM new_splits")
            con.unregister("new_splits")
            if len(rows) > 1:
                more = pd.concat([pd.DataFrame({"run_id": run_id, "repeat": r, "image_id": image_ids, "fold": rows[r]})
                                  for r in range(1, len(rows))])
                con.register("new_repeat_splits", more)
                con.execute("INSERT OR REPLACE INTO repeat_splits SELECT run_id, repeat, image_id, fold FROM new_repeat_splits")
                con.unregister("new_repeat_splits")

    def save_iterations(self, rows: list[dict]) -> None:
        if not rows:
            return
        df = pd.DataFrame(rows, columns=["run_id", "fold", "phase", "iteration", "epoch", "loss", "accuracy", "lr", "elapsed_s"])
        with self.transaction() as con:
            con.register("new_iters", df)
            con.execute("INSERT OR REPLACE INTO iterations SELECT * FROM new_iters")
            con.unregister("new_iters")

    def save_fold(self, run_id: str, fold: dict, predictions: pd.DataFrame, cams: pd.DataFrame | None = None) -> None:
        """One fold's metrics, out-of-fold predictions and Grad-CAM index in one transaction: all or nothing."""
        preds = predictions.assign(run_id=run_id)
        row = {"run_id": run_id, **fold}
        with self.transaction() as con:
            con.execute(
                f"INSERT OR REPLACE INTO folds ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )
            if not preds.empty and int(preds.get("repeat", pd.Series([0])).iloc[0]) > 0:  # a later repeat's fold
                con.register("new_preds", preds)
                con.execute("INSERT OR REPLACE INTO repeat_predictions SELECT run_id, repeat, image_id, fold, label_index, prob_positive "
                            "FROM new_preds")
                con.unregister("new_preds")
            elif not preds.empty:  # a diverged fold stores its row and no prediction
                con.register("new_preds", preds)
                con.execute(
                    "INSERT OR REPLACE INTO predictions SELECT run_id, image_id, fold, label_index, pred_index, "
                    "prob_positive, probs::DOUBLE[] FROM new_preds"
                )
                con.unregister("new_preds")
            if cams is not None and not cams.empty:
                con.register("new_cams", cams.assign(run_id=run_id))
                con.execute(
                    "INSERT OR REPLACE INTO cams SELECT run_id, image_id, fold, target, target_class, artifact, slot, outcome, "
                    "prob_positive, has_mask, pointing_hit, pointing_chance, energy_in_mask, mask_fraction, peak_y, peak_x FROM new_cams"
                )
                con.unregister("new_cams")

    def clear_folds(self, run_id: str, folds: list[int]) -> None:
        """Remove what unfinished folds left behind (curve, predictions, heat-map index, fold row), before they train again."""
        if not folds:
            return
        marks = ", ".join("?" for _ in folds)
        with self.transaction() as con:
            for table in ("cams", "predictions", "repeat_predictions", "iterations", "folds"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ? AND fold IN ({marks})", [run_id, *folds])

    def mark_interrupted(self, run_id: str, *, pid: Any, error: str) -> bool:
        """'interrupted', only if the run is still running or queued under the same pid (no race with a resume)."""
        with self.transaction() as con:
            changed = con.execute(
                "UPDATE runs SET status = 'interrupted', error = ? WHERE run_id = ? AND status IN ('running', 'queued') "
                "AND pid IS NOT DISTINCT FROM ? RETURNING run_id", [error, run_id, None if pd.isna(pid) else int(pid)]).fetchall()
        return bool(changed)

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows everywhere and its artifacts folder; the data set and the cache stay."""
        import shutil

        with self.transaction() as con:
            con.execute("DELETE FROM evaluation_predictions WHERE evaluation_id IN (SELECT evaluation_id FROM evaluations WHERE run_id = ?)",
                        [run_id])
            for table in ("cams", "predictions", "repeat_predictions", "iterations", "folds", "splits", "repeat_splits", "evaluations",
                          "review_tags", "runs"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # -- reads ---------------------------------------------------------------------------
    def list_runs(self) -> pd.DataFrame:
        return self.query(
            "SELECT run_id, name, status, preset, created_at, dataset_id, synthetic, device, weights_used, n_images, folds, "
            "accuracy, sensitivity, specificity, auc, auc_mean_folds, train_seconds, total_seconds "
            "FROM runs ORDER BY created_at DESC"
        )

    def run_records(self, *, status: str | None = None) -> list[RunRecord]:
        """Every run, or those with `status`, newest first: one query whatever the store holds."""
        where, params = (" WHERE status = ?", [status]) if status else ("", [])
        df = self.query(f"SELECT {', '.join(RunRecord.COLUMNS)} FROM runs{where} ORDER BY created_at DESC", params)
        return [RunRecord.from_row(row) for row in df.to_dict("records")]

    def runs_overview(self) -> pd.DataFrame:
        """Every run with what a table of runs shows (metrics as fractions) and who runs it, newest first."""
        return self.query(
            "SELECT run_id, coalesce(name, run_id) AS name, status, coalesce(preset, '') AS preset, coalesce(tags, '') AS tags, sweep_id, "
            "dataset_id, synthetic, n_images, folds, auc, accuracy, sensitivity, specificity, train_seconds, weights_used, device, "
            "created_at, pid, host, pid_start FROM runs ORDER BY created_at DESC")

    def run_summaries(self, *, status: str | None = None) -> list[RunSummary]:
        """Every run, or those with `status`, newest first, as a list shows them: one light query whatever the store holds."""
        where, params = (" WHERE status = ?", [status]) if status else ("", [])
        rows = self.rows(f"SELECT {', '.join(RunSummary.COLUMNS)} FROM runs{where} ORDER BY created_at DESC", params)
        return [RunSummary.from_tuple(row) for row in rows]

    def fold_model_files(self, run: RunRecord | RunSummary) -> list[Path]:
        """The run's saved fold models (save_models=true), or [] when any is missing; stops at the first missing file."""
        files = []
        for k in range(run.folds):
            file = self.run_dir(run.run_id) / f"fold_{k}.pt"
            if not file.is_file():
                return []
            files.append(file)
        return files

    def run_record(self, run_id: str) -> RunRecord:
        rows = self._once(("run_record", run_id), lambda: self.rows(f"SELECT {', '.join(RunRecord.COLUMNS)} FROM runs WHERE run_id = ?",
                                                                    [run_id]))
        if not rows:
            raise CxrError(f"no run {run_id!r} in {self.path}")
        return RunRecord.from_row(dict(zip(RunRecord.COLUMNS, rows[0])))

    def scored(self, run: RunRecord) -> pd.DataFrame:
        """The run's out-of-fold predictions without the per-class probabilities, each with its image's patient (group_id):
        what every statistic of a binary call needs, in one query (sorted by fold, then image)."""
        frame = self._once(("scored", run.run_id), lambda: self.query(
            "SELECT p.image_id, p.fold, p.label_index, p.pred_index, p.prob_positive, i.group_id FROM predictions p "
            "LEFT JOIN images i ON i.dataset_id = ? AND i.image_id = p.image_id WHERE p.run_id = ? ORDER BY p.fold, p.image_id",
            [run.dataset_id, run.run_id]))
        return frame.copy() if self._memo is not None else frame

    def run(self, run_id: str) -> dict:
        found = self.find_run(run_id)
        if found is None:
            raise CxrError(f"no run {run_id!r} in {self.path}")
        return found

    def find_run(self, run_id: str) -> dict | None:
        """The run's whole row, or None while it does not exist (yet: a background job still reading its data set)."""
        df = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        return None if df.empty else df.iloc[0].to_dict()

    def active_runs(self) -> list[dict]:
        """Runs the store has as running or queued, newest first, with their owner process (liveness is the caller's)."""
        df = self.query("SELECT run_id, name, status, preset, pid, host, pid_start FROM runs WHERE status IN ('running', 'queued') "
                        "ORDER BY created_at DESC")
        return [] if df.empty else df.to_dict("records")

    def unfinished_runs(self) -> list[dict]:
        """Runs not finished as the store has them (newest first), with the folds they finished (every repeat's)."""
        df = self.query(
            "SELECT r.run_id, r.name, r.status, r.error, "
            # every repeat's folds (repeated cross-validation trains folds x repeats of them)
            "r.folds * coalesce(TRY_CAST(json_extract_string(r.config, '$.repeats') AS INTEGER), 1) AS folds, r.pid, r.host, r.pid_start, "
            "r.created_at, "
            "(SELECT count(*) FROM folds f WHERE f.run_id = r.run_id AND f.status = 'finished') AS folds_done, "
            "(SELECT count(*) FROM folds f WHERE f.run_id = r.run_id AND f.status = 'diverged') AS diverged "
            "FROM runs r WHERE r.status IN ('failed', 'cancelled', 'interrupted', 'running', 'queued') ORDER BY r.created_at DESC")
        return [] if df.empty else df.to_dict("records")

    def sweep_runs(self, sweep_id: str) -> pd.DataFrame:
        """A sweep's runs in the order they were created, with what its live view shows and their owner process."""
        return self.query("SELECT run_id, name, status, auc, train_seconds, pid, host, pid_start FROM runs WHERE sweep_id = ? "
                          "ORDER BY created_at", [sweep_id])

    def sweep_finished_ids(self, sweep_id: str) -> list[str]:
        return [r[0] for r in self.rows("SELECT run_id FROM runs WHERE sweep_id = ? AND status = 'finished' ORDER BY created_at",
                                        [sweep_id])]

    def finished_sweeps(self) -> pd.DataFrame:
        """(sweep_id, n finished runs, started) of every sweep with a finished run, newest first."""
        return self.query("SELECT sweep_id, count(*) AS n, min(created_at) AS started FROM runs WHERE sweep_id IS NOT NULL "
                          "AND status = 'finished' GROUP BY sweep_id ORDER BY started DESC")

    def folds(self, run_id: str, *, every_repeat: bool = False) -> pd.DataFrame:
        """The folds of the run's first repeat (what its statistics are), or with `every_repeat` those of all its repeats."""
        if every_repeat:
            return self.query("SELECT * FROM folds WHERE run_id = ? ORDER BY fold", [run_id])
        return self.query("SELECT f.* FROM folds f JOIN runs r ON r.run_id = f.run_id WHERE f.run_id = ? AND f.fold < coalesce(r.folds, 2147483647) "
                          "ORDER BY f.fold", [run_id])

    def repeated_predictions(self, run_id: str) -> pd.DataFrame:
        """Every repeat's out-of-fold predictions (repeat, image_id, fold, label_index, prob_positive): the first repeat's
        from `predictions`, the others' from `repeat_predictions`."""
        return self.query("SELECT 0 AS repeat, image_id, fold, label_index, prob_positive FROM predictions WHERE run_id = ? UNION ALL "
                          "SELECT repeat, image_id, fold, label_index, prob_positive FROM repeat_predictions WHERE run_id = ? "
                          "ORDER BY repeat, fold, image_id", [run_id, run_id])

    # -- clinicians in the loop (core/review/) ---------------------------------------------
    def save_tag(self, run_id: str, image_id: str, reviewer: str, tag: str, note: str = "") -> None:
        """A reviewer's tag of one case of a run; tagging the case again replaces that reviewer's tag (others' stay)."""
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO review_tags VALUES (?, ?, ?, ?, ?, ?)", [run_id, image_id, reviewer, tag, note, now()])

    def tags(self, run_id: str) -> pd.DataFrame:
        """Every reviewer's tags of a run's cases, oldest first."""
        return self.query("SELECT image_id, reviewer, tag, note, tagged_at FROM review_tags WHERE run_id = ? ORDER BY tagged_at, image_id",
                          [run_id])

    def label_errors(self, data: str) -> dict[str, str]:
        """image_id -> why, for the images of data set `data` (the runs' `data` setting) that a reviewer tagged as a label error
        in any run on it: what `exclude_label_errors` leaves out of the next run. Paths are compared resolved, so a run on
        `data/demo` and one on its absolute path are runs on the same data."""
        rows = self.rows(
            "SELECT t.image_id, t.reviewer, json_extract_string(r.config, '$.data') FROM review_tags t JOIN runs r ON r.run_id = t.run_id "
            "WHERE t.tag = 'label error' ORDER BY t.image_id, t.reviewer")
        target = Path(data).expanduser().resolve()
        who: dict[str, list[str]] = {}
        for image_id, reviewer, place in rows:
            if Path(place).expanduser().resolve() == target and reviewer not in who.setdefault(image_id, []):
                who[image_id].append(reviewer)
        return {image_id: f"label error (tagged by {', '.join(names)})" for image_id, names in who.items() if names}

    def save_study(self, study: dict, cases: pd.DataFrame) -> None:
        """A reader study and its cases (case_id, image_id, truth, prob_positive, has_cam) in one transaction."""
        with self.transaction() as con:
            con.execute(f"INSERT INTO studies ({', '.join(study)}) VALUES ({', '.join('?' * len(study))})", list(study.values()))
            con.register("new_cases", cases.assign(study_id=study["study_id"]))
            con.execute("INSERT INTO study_cases SELECT study_id, case_id, image_id, truth, prob_positive, has_cam FROM new_cases")
            con.unregister("new_cases")

    def studies(self) -> pd.DataFrame:
        return self.query("SELECT s.*, (SELECT count(*) FROM reads r WHERE r.study_id = s.study_id AND r.session <> 'teaching') AS n_reads "
                          "FROM studies s ORDER BY s.created_at DESC")

    def study(self, study_id: str) -> dict:
        found = self.find_study(study_id)
        if found is None:
            raise CxrError(f"no reader study {study_id!r} in {self.path}; list them on the Reader study page")
        return found

    def find_study(self, study_id: str) -> dict | None:
        df = self.query("SELECT * FROM studies WHERE study_id = ?", [study_id])
        return None if df.empty else df.iloc[0].to_dict()

    def study_cases(self, study_id: str) -> pd.DataFrame:
        return self.query("SELECT case_id, image_id, truth, prob_positive, has_cam FROM study_cases WHERE study_id = ? ORDER BY case_id",
                          [study_id])

    def save_reads(self, rows: pd.DataFrame) -> int:
        """Reads (study_id, reader, session, case_id, call, confidence, seconds, read_at); a read already stored (same study,
        reader, session and case) is kept and the new one dropped, so merging a file twice counts nothing twice.
        Returns how many reads were new."""
        if rows.empty:
            return 0
        with self.transaction() as con:
            before = con.execute("SELECT count(*) FROM reads").fetchall()[0][0]
            con.register("new_reads", rows)
            con.execute("INSERT OR IGNORE INTO reads SELECT study_id, reader, session, case_id, call, confidence, seconds, read_at "
                        "FROM new_reads")
            con.unregister("new_reads")
            return int(con.execute("SELECT count(*) FROM reads").fetchall()[0][0] - before)

    def reads(self, study_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM reads WHERE study_id = ? ORDER BY reader, session, read_at", [study_id])

    def all_splits(self, run_id: str) -> pd.DataFrame:
        """(repeat, image_id, fold) of every repeat's split."""
        return self.query("SELECT 0 AS repeat, image_id, fold FROM splits WHERE run_id = ? UNION ALL "
                          "SELECT repeat, image_id, fold FROM repeat_splits WHERE run_id = ? ORDER BY repeat, image_id", [run_id, run_id])

    def predictions(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM predictions WHERE run_id = ? ORDER BY fold, image_id", [run_id])

    def prediction(self, run_id: str, image_id: str) -> tuple | None:
        """(fold, label_index, prob_positive) of one image's out-of-fold prediction, or None when the run has none for it."""
        rows = self.rows("SELECT fold, label_index, prob_positive FROM predictions WHERE run_id = ? AND image_id = ?", [run_id, image_id])
        return rows[0] if rows else None

    def save_evaluation(self, evaluation_id: str, *, run_id: str, image_ids: list[str], label_index, prob_positive, **fields_: Any) -> None:
        """An external validation and its predictions in one transaction."""
        preds = pd.DataFrame({"evaluation_id": evaluation_id, "image_id": list(image_ids),
                              "label_index": np.asarray(label_index, dtype=int), "prob_positive": np.asarray(prob_positive, dtype=float)})
        row = {"evaluation_id": evaluation_id, "run_id": run_id, **fields_}
        with self.transaction() as con:
            con.execute(f"INSERT OR REPLACE INTO evaluations ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
            con.register("new_eval_preds", preds)
            con.execute("INSERT OR REPLACE INTO evaluation_predictions SELECT evaluation_id, image_id, label_index, prob_positive "
                        "FROM new_eval_preds")
            con.unregister("new_eval_preds")

    def evaluation_ids(self, run_id: str) -> tuple[str, ...]:
        return tuple(r[0] for r in self.rows("SELECT evaluation_id FROM evaluations WHERE run_id = ? ORDER BY created_at", [run_id]))

    def evaluations(self, run_id: str) -> pd.DataFrame:
        """A run's external validations, oldest first."""
        return self.query("SELECT * FROM evaluations WHERE run_id = ? ORDER BY created_at", [run_id])

    def evaluation_predictions(self, evaluation_id: str) -> pd.DataFrame:
        return self.query("SELECT image_id, label_index, prob_positive FROM evaluation_predictions WHERE evaluation_id = ? "
                          "ORDER BY image_id", [evaluation_id])

    def dataset_levels(self, dataset_id: str, image_ids: list[str]) -> pd.DataFrame:
        """(image_id, variable, level) of a data set's images, its subgroup columns and views (as subgroup_levels)."""
        levels = self.query("SELECT image_id, variable, level FROM subgroups WHERE dataset_id = ? UNION ALL "
                            "SELECT image_id, 'view' AS variable, view AS level FROM images WHERE dataset_id = ? AND coalesce(view, '') <> ''",
                            [dataset_id, dataset_id])
        return levels[levels["image_id"].isin(set(image_ids))] if not levels.empty else levels

    def subgroup_levels(self, run: RunRecord) -> pd.DataFrame:
        """(image_id, variable, level) of a run's predicted images: the data set's subgroup columns, and the view where the
        images have one (the variables in the order the manifest gave them, view last)."""
        return self.query(
            "SELECT s.image_id, s.variable, s.level FROM subgroups s JOIN predictions p ON p.image_id = s.image_id "
            "WHERE s.dataset_id = ? AND p.run_id = ? "
            "UNION ALL SELECT i.image_id, 'view' AS variable, i.view AS level FROM images i JOIN predictions p ON p.image_id = i.image_id "
            "WHERE i.dataset_id = ? AND p.run_id = ? AND coalesce(i.view, '') <> ''",
            [run.dataset_id, run.run_id, run.dataset_id, run.run_id])

    def iterations(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM iterations WHERE run_id = ? ORDER BY fold, phase, iteration", [run_id])

    def splits(self, run_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM splits WHERE run_id = ? ORDER BY image_id", [run_id])

    def cams(self, run_id: str, *, target: str | None = None) -> pd.DataFrame:
        """The run's heat-map index, or that of one `target` (predicted | positive)."""
        if target is None:
            return self.query("SELECT * FROM cams WHERE run_id = ? ORDER BY fold, slot, target", [run_id])
        return self.query("SELECT * FROM cams WHERE run_id = ? AND target = ? ORDER BY fold, slot", [run_id, target])

    def cams_of(self, run_id: str, target: str, image_ids: list[str]) -> pd.DataFrame:
        """The heat-map index rows of these images (those that have one)."""
        marks = ", ".join("?" for _ in image_ids)
        return self.query(f"SELECT image_id, fold, artifact, slot, outcome, prob_positive FROM cams WHERE run_id = ? AND target = ? "
                          f"AND image_id IN ({marks})", [run_id, target, *image_ids])

    def gallery_cams(self, run_id: str, *, target: str, outcomes: list[str], fold: int | None, limit: int) -> pd.DataFrame:
        """The heat-map index of a gallery: the chosen outcomes (and fold), most confident first, cut to `limit` in DuckDB so a
        large data set's index never comes whole into pandas."""
        marks = ", ".join("?" for _ in outcomes)
        return self.query(
            f"SELECT * FROM cams WHERE run_id = ? AND target = ? AND outcome IN ({marks})" + (" AND fold = ?" if fold is not None else "")
            + " ORDER BY abs(prob_positive - 0.5) DESC, image_id LIMIT ?",
            [run_id, target, *outcomes, *([fold] if fold is not None else []), int(limit)])

    def dataset(self, dataset_id: str) -> dict | None:
        """The data set's row (source, root, counts, classes) with its cohort flow parsed (`flow`: {} when it has none)."""
        df = self.query("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
        if df.empty:
            return None
        row = df.iloc[0].to_dict()
        row["flow"] = json.loads(row["flow"]) if row.get("flow") else {}
        return row

    def class_counts(self, dataset_id: str) -> pd.DataFrame:
        """(class, images, patients) of the images used, counted in DuckDB (a data set may hold hundreds of thousands)."""
        return self.query("SELECT label AS class, count(*) AS images, count(DISTINCT nullif(group_id, '')) AS patients FROM images "
                          "WHERE dataset_id = ? AND excluded_reason = '' GROUP BY label ORDER BY label", [dataset_id])

    def exclusion_counts(self, dataset_id: str) -> pd.DataFrame:
        """(reason, files) of the images left out, most frequent reason first."""
        return self.query("SELECT excluded_reason AS reason, count(*) AS files FROM images WHERE dataset_id = ? AND excluded_reason <> '' "
                          "GROUP BY excluded_reason ORDER BY files DESC", [dataset_id])

    def images(self, dataset_id: str) -> pd.DataFrame:
        return self.query("SELECT * FROM images WHERE dataset_id = ? ORDER BY image_id", [dataset_id])

    def image_files(self, dataset_id: str, image_ids: list[str] | None = None, *, limit: int | None = None) -> pd.DataFrame:
        """(image_id, path, mask_path) of these images of a data set, or of its first `limit` usable ones (not excluded)."""
        if image_ids is not None:
            marks = ", ".join("?" for _ in image_ids) or "NULL"
            return self.query(f"SELECT image_id, path, mask_path FROM images WHERE dataset_id = ? AND image_id IN ({marks}) ORDER BY image_id",
                              [dataset_id, *image_ids])
        return self.query("SELECT image_id, path, mask_path FROM images WHERE dataset_id = ? AND excluded_reason = '' ORDER BY image_id "
                          "LIMIT ?", [dataset_id, int(limit if limit is not None else 2**31 - 1)])

    def schema_version(self) -> int:
        df = self.query("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(df.iloc[0, 0]) if not df.empty else 0


def _stored_version(con: duckdb.DuckDBPyConnection) -> int:
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except duckdb.CatalogException:
        return SCHEMA_VERSION  # no tables yet: nothing to bring forward (the first writer creates them)
    return int(row[0]) if row else SCHEMA_VERSION


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a store forward to SCHEMA_VERSION, one migration at a time, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise CxrError(f"the run store was written by a newer cxr-transfer (schema {current} > {SCHEMA_VERSION}); upgrade")
    for version in range(current + 1, SCHEMA_VERSION + 1):
        con.begin()
        con.execute(MIGRATIONS[version])
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)])
        con.commit()


class IterationBuffer:
    """Collects curve rows and writes them at most every `interval_s` seconds (and on flush(force=True))."""

    def __init__(self, store: Store, interval_s: float = 2.0) -> None:
        self.store, self.interval_s = store, interval_s
        self.rows: list[dict] = []
        self._last = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if time.monotonic() - self._last >= self.interval_s:
            self.flush(force=True)

    def flush(self, *, force: bool = False) -> None:
        if self.rows and (force or time.monotonic() - self._last >= self.interval_s):
            self.store.save_iterations(self.rows)
            self.rows = []
        self._last = time.monotonic()
