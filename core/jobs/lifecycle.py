"""A run's life: its statuses, whether the process behind a 'running' run still lives, and what may be resumed.

Statuses (`runs.status`):
  queued      waiting for the GPU another run holds (core/jobs/gpuqueue.py)
  running     training; its process id, host and process start time are stored with it
  finished    every fold trained and the pooled metrics stored
  failed      stopped by an error (`runs.error` says which; a diverged fold, a full disk, ...)
  cancelled   stopped by the user (Ctrl-C, the Cancel button)
  interrupted the process vanished without saying why (killed, power loss): found by `mark_interrupted`
Failed, cancelled and interrupted runs can be resumed (`python -m core resume RUN_ID`).

A pid alone is a weak identity: after a crash the kernel can give the same pid to another
process, which would keep a dead run looking alive. So a run also stores its host and its
process start time (boot id + start tick from /proc); a pid that now belongs to a process
started at another time is not the run's. No torch here: the pages import this.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from core import CxrError

UNFINISHED = ("failed", "cancelled", "interrupted")  # what `resume` continues
ACTIVE = ("running", "queued")  # what a live process owns
INTERRUPTED_ERROR = "the run's process ended without finishing (killed or power loss); finished folds are kept"


@dataclass(frozen=True)
class ProcessId:
    """Who runs a run: pid, host name and a start token that a reused pid cannot share."""

    pid: int
    host: str
    token: str  # "<boot id>/<start tick>", or "" where /proc is not available


def start_token(pid: int) -> str:
    """The boot id and start time (clock ticks since boot) of process `pid`, or "" when unknown."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            after_name = fh.read().rsplit(")", 1)[1].split()  # the name may hold spaces and parentheses
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except (OSError, IndexError, ValueError):
        return ""
    return f"{boot}/{after_name[19]}"  # field 22 (starttime); after_name starts at field 3


def current_process() -> ProcessId:
    return ProcessId(os.getpid(), socket.gethostname(), start_token(os.getpid()))


def identify(pid: int) -> ProcessId:
    """The identity of another process of this machine (a job just started), as the run will store it."""
    return ProcessId(int(pid), socket.gethostname(), start_token(pid))


def is_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists and is not a zombie (a finished child not yet reaped)."""
    pid = _pid(pid)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def process_alive(pid: int | None, host: str | None = None, token: str | None = None) -> bool:
    """Whether the process that stored (pid, host, token) is still that process.

    A run of another host cannot be checked from here and counts as alive (it is not ours to
    declare dead). Runs stored before version 4 of the store have no token: the pid decides.
    """
    host, token = _text(host), _text(token)  # nulls from the store arrive as None or NaN
    if host and host != socket.gethostname():
        return True
    if not is_alive(pid):
        return False
    if token:
        now = start_token(_pid(pid))
        return now == "" or now == token
    return True


def run_alive(run: dict) -> bool:
    return process_alive(run.get("pid"), run.get("host"), run.get("pid_start"))


def effective_status(run: dict) -> str:
    """The stored status, except that a running or queued run whose process is gone reads 'interrupted'."""
    status = run["status"]
    if status in ACTIVE and not run_alive(run):
        return "interrupted"
    return status


def mark_interrupted(store) -> list[str]:
    """Store 'interrupted' for every running or queued run whose process is gone; returns their ids.

    The update is conditional on the pid it checked, so a run that a resume has just taken
    over (new pid) is never marked by mistake.
    """
    marked = []
    for run in store.active_runs():
        if not run_alive(run) and store.mark_interrupted(run["run_id"], pid=run["pid"], error=INTERRUPTED_ERROR):
            marked.append(run["run_id"])
    return marked


def check_resumable(store, run_id: str) -> dict:
    """The run, when it can be resumed; else a CxrError that says why not and what to do."""
    run = store.run(run_id)
    status = effective_status(run)
    if status == "finished":
        raise CxrError(f"run {run_id} is already finished; nothing to resume")
    if status in ACTIVE and _pid(run["pid"]) != os.getpid():
        where = f" on {run['host']}" if _text(run.get("host")) else ""
        raise CxrError(f"run {run_id} is still {status} (process {_pid(run['pid'])}{where}); wait for it, or cancel it before resuming")
    folds = store.folds(run_id, every_repeat=True)
    diverged = folds[folds["status"] == "diverged"] if not folds.empty else folds
    if not diverged.empty:
        raise CxrError(f"run {run_id} stopped because fold {int(diverged['fold'].iloc[0]) + 1} diverged; resuming would repeat it with "
                       "the same settings: start a new run with a lower learning_rate")
    return run


def unfinished_candidates(store) -> list[dict]:
    """Runs not finished as the store has them (newest first), with the folds they finished: one query, no liveness check."""
    return store.unfinished_runs()


def unfinished_from(candidates: list[dict]) -> list[dict]:
    """The failed, cancelled and interrupted runs among `candidates`, a running one whose process is gone included."""
    out = []
    for stored in candidates:
        run = dict(stored)  # the caller's rows (perhaps a cache's) stay as read
        run["status"] = effective_status(run)
        if run["status"] in UNFINISHED:
            run["error"] = _text(run.get("error")) or (INTERRUPTED_ERROR if run["status"] == "interrupted" else "")
            run["resumable"] = not run["diverged"]
            out.append(run)
    return out


def unfinished_runs(store) -> list[dict]:
    """Failed, cancelled and interrupted runs (newest first), with the folds they finished, for Resume buttons."""
    return unfinished_from(unfinished_candidates(store))


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _pid(value) -> int | None:
    """A stored pid as an int, or None for a null (None, NaN or pandas' NA)."""
    try:
        return int(value) or None
    except (TypeError, ValueError):
        return None
