"""Reads of the store that several pages make on every rerun, cached by Streamlit and keyed on the store's version.

Why: a page reruns on every click, and listing thousands of runs costs a connection and a query
(50-100 ms on a lab's 250 MB store). `core.dashboard.store_version` changes with every committed
write (two file stats), so a cached list is reused until something is written, and never stale:
a run that finishes, is renamed or is deleted changes the version. Whether a run's process is still
alive is not in the store: it is checked on every call (unfinished runs), never cached.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core import dashboard
from core.results.records import RunRecord
from pages.ui.display import run_label


@st.cache_data(max_entries=4, show_spinner=False)
def _finished_runs(runs_dir: str, version: tuple) -> dict[str, str]:
    return {r.run_id: run_label(r) for r in dashboard.finished_runs(Path(runs_dir))}


@st.cache_data(max_entries=4, show_spinner=False)
def _sweeps(runs_dir: str, version: tuple) -> dict[str, str]:
    return dashboard.sweep_options(Path(runs_dir))


@st.cache_data(max_entries=4, show_spinner=False)
def _predictable_runs(runs_dir: str, version: tuple) -> dict[str, str]:
    return {r.run_id: run_label(r) for r in dashboard.predictable_runs(Path(runs_dir))}


@st.cache_data(max_entries=64, show_spinner=False)
def _run_record(runs_dir: str, run_id: str, version: tuple) -> RunRecord:
    return dashboard.run_record(Path(runs_dir), run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def _sweep_runs(runs_dir: str, sweep_id: str, version: tuple) -> list[str]:
    return dashboard.sweep_runs(Path(runs_dir), sweep_id)


@st.cache_data(max_entries=4, show_spinner=False)
def _unfinished_candidates(runs_dir: str, version: tuple) -> list[dict]:
    return dashboard.unfinished_candidates(Path(runs_dir))


def unfinished_runs(runs_dir: Path) -> list[dict]:
    """Failed, cancelled and interrupted runs: the store's rows cached, whose process is alive checked on each call."""
    return dashboard.unfinished_runs(runs_dir, _unfinished_candidates(str(runs_dir), dashboard.store_version(runs_dir)))


@st.cache_data(max_entries=4, show_spinner=False)
def _stored_runs(runs_dir: str, version: tuple):
    return dashboard.stored_runs(Path(runs_dir))


def runs_overview(runs_dir: Path):
    """Every run with its metrics and its status now (core.dashboard.runs_overview): the store's rows cached."""
    return dashboard.runs_overview(runs_dir, _stored_runs(str(runs_dir), dashboard.store_version(runs_dir)))


def finished_runs(runs_dir: Path) -> dict[str, str]:
    """{run_id: label} of the finished runs, newest first."""
    return _finished_runs(str(runs_dir), dashboard.store_version(runs_dir))


NO_FINISHED_RUN = "No finished run yet. Start one on the Train page, or: `python -m core run --preset quick --data data/demo`."


def finished_runs_or_stop(runs_dir: Path) -> dict[str, str]:
    """finished_runs, or the page stops here saying how to make one (the pages that show a finished run's results)."""
    options = finished_runs(runs_dir)
    if not options:
        st.info(NO_FINISHED_RUN)
        st.stop()
    return options


def sweeps(runs_dir: Path) -> dict[str, str]:
    """{sweep_id: label} of the sweeps with finished runs, newest first."""
    return _sweeps(str(runs_dir), dashboard.store_version(runs_dir))


def predictable_runs(runs_dir: Path) -> dict[str, str]:
    """Finished runs that kept their fold models. A fold model saved or deleted by hand, outside the
    engine, shows after the next write to the store (or a server restart)."""
    return _predictable_runs(str(runs_dir), dashboard.store_version(runs_dir))


def run_record(runs_dir: Path, run_id: str) -> RunRecord:
    return _run_record(str(runs_dir), run_id, dashboard.store_version(runs_dir))


def sweep_runs(runs_dir: Path, sweep_id: str) -> list[str]:
    return _sweep_runs(str(runs_dir), sweep_id, dashboard.store_version(runs_dir))
