"""Runs as background processes: started by the Train page (or anyone), surviving browser refreshes, cancellable.

A job is `python -m core run --config FILE --run-id ID` in its own process session, so a
Streamlit restart does not kill it; its log is `runs/jobs/<run_id>.log`; its state is the
store's `runs.status` plus whether its process is still alive. The typed configuration goes
whole, as `RunConfig.to_json()` in `runs/jobs/<id>.config.json` (kept: what was asked for),
not as field=value strings parsed again on the other side. Arguments go to the process as a
list (never a shell string), so user input cannot become a command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from core import CxrError
from core.config import RunConfig
from core.ids import new_run_id
from core.jobs.lifecycle import ACTIVE, check_resumable, identify, is_alive, run_alive
from core.safety import refuse_in_demo_mode
from core.results.store import Store

__all__ = ["start_run", "start_sweep", "start_resume", "start_validate", "cancel", "is_alive", "log_tail", "cluster_status"]

ROOT = Path(__file__).resolve().parents[2]  # the repository, where `python -m core` runs


def start_run(cfg: RunConfig, *, runs_dir: Path, preset: str = "custom", name: str = "") -> tuple[str, int]:
    """Start a run in the background; returns (run_id, pid). The config travels whole, as a JSON file; without a
    `name` the run is named from its preset and the settings that differ from it (core.config.auto_name)."""
    refuse_in_demo_mode("training")
    run_id = new_run_id()
    config = _write_config(cfg, runs_dir=runs_dir, job_id=run_id)
    pid = _spawn(["run", "--config", str(config), "--runs-dir", str(runs_dir), "--run-id", run_id,
                  "--name", name, "--label-preset", preset, "--no-progress"], runs_dir=runs_dir, log_name=run_id)
    return run_id, pid


def start_sweep(cfg: RunConfig, grid: dict[str, list[str]], *, runs_dir: Path, preset: str = "custom") -> tuple[str, int]:
    """Start a sweep (the product of `grid` over `cfg`) in the background; returns (sweep_id, pid). Log: runs/jobs/<sweep_id>.log."""
    from core.ids import new_sweep_id
    from core.training.sweep import expand

    refuse_in_demo_mode("training")
    expand(cfg, grid)  # every combination is validated here, so a bad value is refused before anything starts
    sweep_id = new_sweep_id()
    grids = [arg for k, values in grid.items() for arg in ("--grid", f"{k}={','.join(values)}")]
    config = _write_config(cfg, runs_dir=runs_dir, job_id=sweep_id)
    pid = _spawn(["sweep", "--config", str(config), *grids, "--runs-dir", str(runs_dir),
                  "--sweep-id", sweep_id, "--label-preset", preset, "--no-progress"], runs_dir=runs_dir, log_name=sweep_id)
    return sweep_id, pid


def start_resume(run_id: str, *, runs_dir: Path) -> int:
    """Resume a failed, cancelled or interrupted run in the background (`python -m core resume`); returns the pid.

    Refusals (finished, still running, diverged) are raised here, before any process starts.
    The new process is recorded as the run's owner at once, so the live view shows it running
    rather than interrupted while it reads the data set. Its log continues runs/jobs/<run_id>.log.
    """
    refuse_in_demo_mode("resuming a run")
    store = Store(Path(runs_dir))
    check_resumable(store, run_id)
    pid = _spawn(["resume", run_id, "--runs-dir", str(runs_dir), "--no-progress"], runs_dir=runs_dir, log_name=run_id)
    owner = identify(pid)
    store.update_run(run_id, status="running", error=None, pid=owner.pid, host=owner.host, pid_start=owner.token)
    return pid


def _write_config(cfg: RunConfig, *, runs_dir: Path, job_id: str) -> Path:
    """The job's whole configuration as JSON beside its log (read back with RunConfig.from_json, validated there)."""
    path = Path(runs_dir) / "jobs" / f"{job_id}.config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.to_json())
    return path


def _spawn(args: list[str], *, runs_dir: Path, log_name: str) -> int:
    """`python -m core ARGS` in its own process session (a Streamlit restart does not kill it), output to runs/jobs/<log_name>.log."""
    log = Path(runs_dir) / "jobs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # Reap it when it ends, or it stays a zombie in the process table until the dashboard exits. A daemon thread, so
    # stopping the dashboard does not wait for the job (the job's own session keeps it running).
    threading.Thread(target=proc.wait, name=f"reap-{log_name}", daemon=True).start()
    return proc.pid


def cancel(runs_dir: Path, run_id: str) -> bool:
    """Ask a running or queued job to stop (SIGINT: it marks itself cancelled and keeps finished folds)."""
    run = Store(Path(runs_dir)).run(run_id)
    if run["status"] not in ACTIVE or not run_alive(run):
        return False
    os.kill(int(run["pid"]), signal.SIGINT)
    return True


def log_tail(runs_dir: Path, run_id: str, lines: int = 20) -> str:
    log = Path(runs_dir) / "jobs" / f"{run_id}.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def start_validate(run_id: str, data: str, *, runs_dir: Path, name: str = "") -> int:
    """`python -m core validate RUN_ID --data DATA` in the background (log: runs/jobs/validate-<run_id>.log); returns its pid.
    The evaluation shows on the Runs page when it is stored."""
    refuse_in_demo_mode("starting an external validation")
    return _spawn(["validate", run_id, "--data", data, "--name", name, "--runs-dir", str(runs_dir)], runs_dir=runs_dir,
                  log_name=f"validate-{run_id}")


def cluster_status(address: str, *, timeout_s: float = 90.0) -> dict:
    """`python -m core cluster` in a child process: the Ray cluster at `address` ('' = a private instance on this
    machine), as {nodes, cpus, gpus, free_cpus, free_gpus, hosts}. A child, so the dashboard's process never becomes
    a Ray driver (nor imports Ray); the address goes as one argument, never through a shell."""
    import json

    try:
        out = subprocess.run([sys.executable, "-m", "core", "cluster", "--ray-address", address], cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CxrError(f"no answer from a Ray cluster at {address or 'a private instance'} within {timeout_s:.0f} s") from None
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        raise CxrError(lines[-1].removeprefix("error: ") if lines else f"python -m core cluster failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])
