"""Runs as background processes: started by the Train page (or anyone), surviving browser refreshes, cancellable.

A job is `python -m core run ... --run-id ID` in its own process session, so a Streamlit
restart does not kill it; its log is `runs/jobs/<run_id>.log`; its state is the store's
`runs.status` plus whether its process is still alive. Arguments go to the process as a
list (never a shell string), so user input cannot become a command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core.config import RunConfig
from core.engine import new_run_id
from core.store import Store

ROOT = Path(__file__).resolve().parent.parent


def start_run(cfg: RunConfig, *, runs_dir: Path, preset: str = "custom", name: str = "") -> tuple[str, int]:
    """Start a run in the background; returns (run_id, pid). The config travels as --set field=value pairs."""
    from dataclasses import asdict

    run_id = new_run_id()
    log = Path(runs_dir) / "jobs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sets = [arg for k, v in asdict(cfg).items() if k != "data" for arg in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "core", "run", "--preset", "paper", "--data", cfg.data, *sets,
           "--runs-dir", str(runs_dir), "--run-id", run_id, "--name", name or run_id, "--label-preset", preset, "--no-progress"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return run_id, proc.pid


def start_sweep(cfg: RunConfig, grid: dict[str, list[str]], *, runs_dir: Path, preset: str = "custom") -> tuple[str, int]:
    """Start a sweep (the product of `grid` over `cfg`) in the background; returns (sweep_id, pid). Log: runs/jobs/<sweep_id>.log."""
    from dataclasses import asdict

    from core.sweep import expand, new_sweep_id

    expand(cfg, grid)  # every combination is validated here, so a bad value is refused before anything starts
    sweep_id = new_sweep_id()
    log = Path(runs_dir) / "jobs" / f"{sweep_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sets = [arg for k, v in asdict(cfg).items() if k != "data" for arg in ("--set", f"{k}={v}")]
    grids = [arg for k, values in grid.items() for arg in ("--grid", f"{k}={','.join(values)}")]
    cmd = [sys.executable, "-m", "core", "sweep", "--preset", "paper", "--data", cfg.data, *sets, *grids,
           "--runs-dir", str(runs_dir), "--sweep-id", sweep_id, "--label-preset", preset, "--no-progress"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return sweep_id, proc.pid


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:  # a finished child not yet reaped is a zombie: not alive
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def cancel(runs_dir: Path, run_id: str) -> bool:
    """Ask a running job to stop (SIGINT: it marks itself cancelled and keeps finished folds)."""
    run = Store(Path(runs_dir)).run(run_id)
    if run["status"] != "running" or not is_alive(run["pid"]):
        return False
    os.kill(int(run["pid"]), signal.SIGINT)
    return True


def log_tail(runs_dir: Path, run_id: str, lines: int = 20) -> str:
    log = Path(runs_dir) / "jobs" / f"{run_id}.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""
