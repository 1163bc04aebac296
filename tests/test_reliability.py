"""Runs survive what happens to real runs: a killed process is found and resumed, a blown-up loss stops its fold,
two CUDA runs take turns on the GPU."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from core import CxrError
from core.__main__ import main
from core.config import budget
from core.training.engine import resume_cross_validation, run_cross_validation
from core.jobs.lifecycle import check_resumable, current_process, effective_status, mark_interrupted
from core.results.store import Store

from conftest import blob_dataset, ctrl_c_at_fold, tiny_config

ROOT = Path(__file__).resolve().parent.parent


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def wait_for(condition, timeout: float = 300.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")


@pytest.fixture
def sleeper():
    """Another live process of this machine (its pid stands in for a run's process)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_a_killed_run_is_found_interrupted_and_resumes_to_exactly_a_clean_runs_rows(tmp_path):
    data = blob_dataset(tmp_path / "data", n_per_class=12)
    runs = tmp_path / "runs"
    sets = {"weights": "none", "image_size": 32, "batch_size": 8, "max_iterations": 24, "max_epochs": 1000, "folds": 3,
            "eval_every": 5, "gradcam_size": 8, "num_threads": 1}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen([sys.executable, "-m", "core", "run", "--data", str(data), "--runs-dir", str(runs), *args,
                             "--no-progress", "--run-id", "victim"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(tmp_path / "th")})
    store = Store(runs)
    try:
        wait_for(lambda: (store.path.exists() and not store.folds("victim").empty) or proc.poll() is not None)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    before = {"splits": store.splits("victim"), "fold0": store.folds("victim").iloc[0].to_dict(),
              "iterations": store.iterations("victim")}
    assert store.run("victim")["status"] == "running"  # nobody said anything: the process just vanished

    code, out, _ = cli(["runs", "--runs-dir", str(runs)])
    assert code == 0 and "interrupted" in out and store.run("victim")["status"] == "interrupted"

    done = subprocess.run([sys.executable, "-m", "core", "resume", "victim", "--runs-dir", str(runs), "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "victim" and "1 finished fold(s) kept" in done.stderr

    run = store.run("victim")
    assert run["status"] == "finished" and run["resumes"] == 1 and not run["error"]
    folds = store.folds("victim")
    assert folds["fold"].tolist() == [0, 1, 2] and (folds["status"] == "finished").all()
    assert folds.iloc[0].to_dict() == before["fold0"]  # the fold finished before the kill was not retrained
    preds = store.predictions("victim")
    assert len(preds) == run["n_images"] == 24 and preds["image_id"].is_unique
    assert store.splits("victim").equals(before["splits"])
    curve = store.iterations("victim")
    assert not curve.duplicated(["fold", "phase", "iteration"]).any()
    per_fold, _ = budget(tiny_config(**{k: v for k, v in sets.items() if k != "weights"}), n_train=16)
    heldout_per_fold = len([i for i in range(5, per_fold, 5)]) + 1
    assert (curve["phase"] == "train").sum() == 3 * per_fold and (curve["phase"] == "heldout").sum() == 3 * heldout_per_fold
    kept = before["iterations"][before["iterations"]["fold"] == 0].reset_index(drop=True)
    assert curve[curve["fold"] == 0].reset_index(drop=True).equals(kept)
    cams = store.cams("victim")
    assert len(cams) == 2 * 24 and not cams.duplicated(["image_id", "target"]).any()
    assert run["auc"] == pytest.approx(json.loads(run["metrics"])["auc"])


def test_resume_refuses_a_finished_run_and_a_running_one_whose_process_lives(tmp_path, sleeper):
    store = Store(tmp_path)
    store.create_run("done", status="finished")
    with pytest.raises(CxrError, match="already finished; nothing to resume"):
        check_resumable(store, "done")
    me = current_process()
    store.create_run("busy", status="running", pid=sleeper.pid, host=me.host, pid_start=_token(sleeper.pid))
    code, _, err = cli(["resume", "busy", "--runs-dir", str(tmp_path)])
    assert code == 2 and f"still running (process {sleeper.pid}" in err and "Traceback" not in err
    assert store.run("busy")["status"] == "running"  # a refusal changes nothing


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path, sleeper):
    """After a crash the kernel may hand the run's pid to another process: the stored start time tells them apart."""
    store = Store(tmp_path)
    me = current_process()
    store.create_run("old", status="running", pid=sleeper.pid, host=me.host, pid_start=me.token.rsplit("/", 1)[0] + "/1")
    store.create_run("live", status="running", pid=sleeper.pid, host=me.host, pid_start=_token(sleeper.pid))
    store.create_run("gone", status="queued", pid=2**22 + 7)
    assert effective_status(store.run("old")) == "interrupted" and effective_status(store.run("live")) == "running"
    assert sorted(mark_interrupted(store)) == ["gone", "old"]
    assert store.run("old")["status"] == "interrupted" and store.run("live")["status"] == "running"
    assert "killed" in store.run("old")["error"]


def test_marking_interrupted_never_overwrites_a_run_a_resume_just_took_over(tmp_path):
    store = Store(tmp_path)
    store.create_run("r", status="running", pid=2**22 + 7)
    store.update_run("r", pid=os.getpid())  # a resume took it over after the check read the old pid
    assert not store.mark_interrupted("r", pid=2**22 + 7, error="x")
    assert store.run("r")["status"] == "running"


@pytest.mark.slow
def test_a_diverging_fold_stops_the_run_with_a_clear_status_and_keeps_the_folds_before(tmp_path, monkeypatch):
    import core.training.engine as engine

    real = engine.train_folds

    def second_fold_with_an_absurd_learning_rate(cfg, jobs, **kwargs):
        if any(job.fold == 1 for job in jobs):
            cfg = cfg.replace(optimizer="sgdm", learning_rate=1e6)
        return real(cfg, jobs, **kwargs)

    monkeypatch.setattr(engine, "train_folds", second_fold_with_an_absurd_learning_rate)
    data = blob_dataset(tmp_path / "d", n_per_class=9)
    store = Store(tmp_path / "runs")
    with pytest.raises(CxrError, match=r"fold 2 diverged at iteration \d+ \(loss (nan|inf)\); lower the learning rate"):
        run_cross_validation(tiny_config(data, max_iterations=8, gradcam=False), store=store, run_id="boom")
    run = store.run("boom")
    assert run["status"] == "failed" and "fold 2 diverged" in run["error"]
    folds = store.folds("boom").set_index("fold")
    assert folds.loc[0, "status"] == "finished" and folds.loc[1, "status"] == "diverged"
    assert pd.isna(folds.loc[1, "auc"]) and pd.isna(folds.loc[1, "accuracy"])  # no metrics from garbage
    assert set(store.predictions("boom")["fold"]) == {0}  # only the finished fold's predictions
    with pytest.raises(CxrError, match="fold 2 diverged; resuming would repeat it"):
        check_resumable(store, "boom")


def test_an_absurd_learning_rate_gives_one_line_and_exit_code_2(tmp_path):
    data = blob_dataset(tmp_path / "d", n_per_class=6)
    code, out, err = cli(["run", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--set", "weights=none",
                          "--set", "image_size=32", "--set", "folds=2", "--set", "batch_size=4", "--set", "max_iterations=10",
                          "--set", "optimizer=sgdm", "--set", "learning_rate=1e6", "--set", "gradcam=false"])
    last = err.strip().splitlines()[-1]
    assert code == 2 and out == "" and "Traceback" not in err
    assert last.startswith("error: fold 1 diverged at iteration ") and last.endswith("; lower the learning rate (learning_rate=1e+06)")


@pytest.mark.slow
def test_a_second_cuda_run_queues_until_the_gpu_is_free(tmp_path):
    """Faked on a CPU: the run's process is told its device needs the GPU slot, and this test holds the slot first."""
    import core.training.engine as engine
    from core.jobs.gpuqueue import gpu_slot, holder

    assert not engine.needs_gpu_slot(torch.device("cpu"))  # CPU runs never queue
    data = blob_dataset(tmp_path / "d", n_per_class=6)
    store = Store(tmp_path / "runs")
    store.ensure_writable()
    as_if_cuda = ("import sys, core.training.engine as e; e.needs_gpu_slot = lambda device: True\n"
                  "from core.__main__ import main; sys.exit(main(sys.argv[1:]))")
    with gpu_slot(store.runs_dir, "first"):  # the first CUDA run
        proc = subprocess.Popen([sys.executable, "-c", as_if_cuda, "run", "--data", str(data), "--runs-dir", str(store.runs_dir),
                                 "--run-id", "second", "--no-progress", "--set", "weights=none", "--set", "image_size=32",
                                 "--set", "folds=2", "--set", "batch_size=4", "--set", "max_iterations=1", "--set", "gradcam=false"],
                                cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_for(lambda: proc.poll() is not None or (
                not store.query("SELECT status FROM runs WHERE run_id = 'second'").empty and store.run("second")["status"] == "queued"))
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
            assert store.iterations("second").empty and store.run("second")["status"] == "queued"  # nothing trains while it waits
        except BaseException:
            proc.kill()
            raise
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "queued: waiting for the GPU, which run first holds" in err
    assert store.run("second")["status"] == "finished" and holder(store.runs_dir) == "second"


def test_the_gpu_slot_is_freed_when_its_process_is_killed(tmp_path):
    from core.jobs.gpuqueue import gpu_slot

    code = "import sys, time; from core.jobs.gpuqueue import gpu_slot\nwith gpu_slot(sys.argv[1], 'doomed'):\n    print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    waited = []
    proc.kill()
    proc.wait()
    proc.stdout.close()
    with gpu_slot(tmp_path, "next", on_wait=waited.append, poll_s=0.05):
        pass
    assert waited == []  # free at once: the kernel dropped the dead process's lock


@pytest.mark.slow
def test_resume_refuses_a_data_set_that_changed(tmp_path, monkeypatch):
    data = blob_dataset(tmp_path / "d", n_per_class=6)
    store = Store(tmp_path / "runs")
    ctrl_c_at_fold(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(tiny_config(data, folds=2, max_iterations=1, gradcam=False), store=store, run_id="c")
    assert store.run("c")["status"] == "cancelled"
    (data / "Normal" / "normal_000.png").unlink()
    with pytest.raises(CxrError, match="the data set changed since run c started"):
        resume_cross_validation(store, "c")
    assert store.run("c")["status"] == "failed" and store.run("c")["error"].startswith("resume: the data set changed")


def test_start_resume_passes_an_argument_list_and_records_the_new_process(tmp_path, monkeypatch, sleeper):
    import core.jobs.launch as jobs

    store = Store(tmp_path)
    store.create_run("x; rm -rf ~", status="cancelled")
    started = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            started.append((cmd, kw))
            self.pid = sleeper.pid  # stands in for the started process

        def wait(self):  # the launcher reaps what it starts
            return 0

    monkeypatch.setattr(jobs.subprocess, "Popen", FakePopen)
    assert jobs.start_resume("x; rm -rf ~", runs_dir=tmp_path) == sleeper.pid
    cmd, kw = started[0]
    assert cmd[1:5] == ["-m", "core", "resume", "x; rm -rf ~"] and "shell" not in kw  # one argument, never a shell string
    assert cmd[-3:] == ["--runs-dir", str(tmp_path), "--no-progress"]
    run = store.run("x; rm -rf ~")
    assert run["status"] == "running" and run["pid"] == sleeper.pid and run["pid_start"] == _token(sleeper.pid)
    with pytest.raises(CxrError, match="still running"):
        jobs.start_resume("x; rm -rf ~", runs_dir=tmp_path)


def _token(pid: int) -> str:
    from core.jobs.lifecycle import start_token

    return start_token(pid)


# -- Resume and queue in the dashboard -------------------------------------------------------------------

PAGES = ROOT / "pages"


def _stopped_run(store: Store, run_id: str, status: str, **fields) -> None:
    store.create_run(run_id, status=status, name=f"{run_id} run", folds=3, n_images=24, config=tiny_config("d").to_json(), **fields)


def test_the_runs_page_lists_unfinished_runs_with_a_resume_button(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store = Store(tmp_path / "runs")
    _stopped_run(store, "killed", "running", pid=2**22 + 7)  # its process is gone
    _stopped_run(store, "stopped", "cancelled", error="cancelled by the user")
    resumed = []
    monkeypatch.setattr("core.jobs.launch.start_resume", lambda run_id, **kw: resumed.append((run_id, kw)) or 1)
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    monkeypatch.setenv("CXR_DEMO_DIR", str(tmp_path / "no-demo"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/2_Runs.py").run()  # from the home page, so the link to the Train page resolves
    assert not at.exception
    assert at.expander[0].label == "Unfinished runs (2)"
    lines = [m.value for m in at.markdown]
    assert "**killed run** · interrupted · 0 of 3 folds finished" in lines and "**stopped run** · cancelled · 0 of 3 folds finished" in lines
    at.button(key="runs_resume_killed").click().run()
    assert not at.exception and resumed == [("killed", {"runs_dir": store.runs_dir})]
    assert at.session_state["train_job"] == "killed" and "Resuming killed" in at.success[0].value


def test_the_train_page_offers_resume_for_a_failed_run_and_says_when_a_run_is_queued(tmp_path, monkeypatch, sleeper):
    from streamlit.testing.v1 import AppTest

    store = Store(tmp_path / "runs")
    _stopped_run(store, "broke", "failed", error="the disk holding runs is full")
    me = current_process()
    _stopped_run(store, "waits", "queued", pid=sleeper.pid, host=me.host, pid_start=_token(sleeper.pid))
    (store.runs_dir / "gpu.lock").write_text("broke")
    resumed = []
    monkeypatch.setattr("core.jobs.launch.start_resume", lambda run_id, **kw: resumed.append(run_id) or 1)
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60)
    at.session_state["train_job"] = "broke"
    at.run()
    assert not at.exception and "the disk holding runs is full" in at.error[0].value
    at.button(key="train_resume_broke").click().run()
    assert resumed == ["broke"]
    at.session_state["train_job"] = "waits"
    at.run()
    assert "Queued: waiting for the GPU, which run broke holds" in at.info[0].value
    assert at.button(key="train_cancel_waits") and not any(b.key == "train_resume_waits" for b in at.button)


def test_a_finished_background_job_is_reaped_not_left_a_zombie(tmp_path):
    """The dashboard starts jobs and never waits for them; each must still be reaped when it ends."""
    import time

    from core.jobs.launch import _spawn

    pid = _spawn(["--help"], runs_dir=tmp_path, log_name="reap-test")  # exits at once
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()  # a zombie keeps its /proc entry until its parent waits for it
    assert "usage: python -m core" in (tmp_path / "jobs" / "reap-test.log").read_text()
