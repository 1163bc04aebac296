"""Runs and sweeps on Ray: the same rows as a local run, folds on every node, a killed worker or driver survived,
progress readable while it trains.

One private Ray instance (2 CPUs, no dashboard) serves the whole test session; tests that need a cluster of their
own, or a driver process to kill, start it in a child process. Tolerance: predictions within 1e-6 of a local run's
(the one the project uses for its fast paths, tests/test_foldstack.py) at the same number of threads; on one CPU
they come out identical.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.results.store import Store
from core.training.engine import resume_cross_validation, run_cross_validation
from core.training.sweep import parse_grid, run_sweep

from conftest import blob_dataset, tiny_config

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def faults_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-faults")


@pytest.fixture(scope="session")
def ray_instance(faults_dir):
    from core.training.ray_executor import FAULTS_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), FAULTS_ENV: str(faults_dir)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("ray-data") / "blobs", n_per_class=9)


def _cfg(data, **changes):
    """One thread everywhere: a Ray task uses as many threads as the CPUs it reserved (1), and two thread counts sum
    floating-point numbers in different orders (about 1 % apart in a loss after a few steps of a model from scratch)."""
    return tiny_config(data, **{"batch_size": 8, "folds": 3, "max_iterations": 4, "eval_every": 2, "num_threads": 1, **changes})


def assert_same_rows(a: Store, run_a: str, b: Store, run_b: str) -> None:
    """Same splits, fold rows, curve keys, heat-map index and predictions (within 1e-6) as the other run."""
    sa, sb = a.splits(run_a), b.splits(run_b)
    assert sa[["image_id", "fold"]].equals(sb[["image_id", "fold"]])
    fa, fb = a.folds(run_a), b.folds(run_b)
    cols = ["fold", "status", "n_train", "n_test", "iterations"]
    assert fa[cols].equals(fb[cols])
    ia, ib = a.iterations(run_a), b.iterations(run_b)
    assert ia[["fold", "phase", "iteration"]].equals(ib[["fold", "phase", "iteration"]])
    np.testing.assert_allclose(ia["loss"], ib["loss"], rtol=1e-6)
    pa, pb = a.predictions(run_a), b.predictions(run_b)
    assert pa["image_id"].tolist() == pb["image_id"].tolist()
    np.testing.assert_allclose(pa["prob_positive"], pb["prob_positive"], atol=1e-6)
    ca, cb = a.cams(run_a), b.cams(run_b)
    assert sorted(zip(ca["image_id"], ca["target"])) == sorted(zip(cb["image_id"], cb["target"]))


def test_a_run_on_ray_stores_the_rows_of_a_local_run(ray_instance, data, tmp_path):
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")
    a = run_cross_validation(_cfg(data), store=local, run_id="a")
    b = run_cross_validation(_cfg(data, executor="ray"), store=remote, run_id="b")
    assert_same_rows(local, "a", remote, "b")
    assert b.metrics["auc"] == pytest.approx(a.metrics["auc"], abs=1e-9)
    run = remote.run("b")
    assert run["status"] == "finished" and run["device"].startswith("ray: 1 node, 2 CPUs, 0 GPUs")
    assert all("ray node" in n for n in remote.folds("b")["node"])  # where each fold ran
    # each fold's start is stamped by its worker when it began, not when the driver submitted all three at once
    assert remote.folds("b")["started_at"].nunique() == 3
    assert local.folds("a")["node"].notna().all()


def test_a_sweep_on_ray_runs_all_its_folds_in_one_pool_on_shared_splits(ray_instance, data, tmp_path):
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")
    grid = parse_grid(["max_iterations=2,4"])
    _, la = run_sweep(_cfg(data), grid, store=local)
    _, ra = run_sweep(_cfg(data, executor="ray"), grid, store=remote)
    for x, y in zip(la, ra):
        assert_same_rows(local, x.run_id, remote, y.run_id)
    names = remote.query("SELECT name FROM runs ORDER BY name")["name"].tolist()
    assert names == ["custom · iters 2", "custom · iters 4"]
    # the second run's folds were submitted with the first's: they started before the first run finished
    runs = remote.query("SELECT run_id, finished_at FROM runs ORDER BY name")
    second = remote.folds(ra[1].run_id)
    assert second["started_at"].min() < runs["finished_at"].iloc[0]


def test_a_worker_killed_mid_fold_is_retried_and_the_run_is_exact(ray_instance, data, tmp_path, faults_dir):
    local, remote = Store(tmp_path / "local"), Store(tmp_path / "ray")
    run_cross_validation(_cfg(data), store=local, run_id="clean")
    (faults_dir / "killed-1").write_text("3")  # fold 2's worker dies at its third iteration
    run_cross_validation(_cfg(data, executor="ray"), store=remote, run_id="killed")
    assert not (faults_dir / "killed-1").exists()  # the fault did happen
    assert_same_rows(local, "clean", remote, "killed")
    assert remote.run("killed")["status"] == "finished"


def test_a_diverged_fold_on_ray_fails_its_run_as_locally_without_retry(ray_instance, data, tmp_path):
    from core import CxrError

    store = Store(tmp_path / "ray")
    with pytest.raises(CxrError, match="diverged"):
        run_cross_validation(_cfg(data, executor="ray", learning_rate=1e6, optimizer="sgdm", max_iterations=8), store=store, run_id="d")
    run = store.run("d")
    assert run["status"] == "failed" and "diverged" in run["error"] and "lower the learning rate" in run["error"]
    assert "diverged" in store.folds("d")["status"].tolist()


def test_a_ray_runs_progress_is_in_the_store_while_it_trains(ray_instance, data, tmp_path):
    from core.dashboard import job_progress

    store = Store(tmp_path / "ray")
    cfg = _cfg(data, executor="ray", max_iterations=40, eval_every=20, gradcam=False)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (run_cross_validation(cfg, store=store, run_id="live"), done.set()), daemon=True)
    thread.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not done.is_set():
        if store.path.exists() and not store.query("SELECT run_id FROM runs WHERE run_id = 'live'").empty:
            p = job_progress(store.runs_dir, "live")
            if p["status"] == "running" and 0 < p["done"] < p["total"]:
                seen = p
                break
        time.sleep(0.5)
    thread.join(timeout=180)
    assert seen is not None, "no iteration rows were readable before the run finished"
    assert seen["total"] == 3 * 40 and not seen["curve"].empty
    assert store.run("live")["status"] == "finished"


def _start_driver(args: list[str], runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", *args, "--runs-dir", str(runs), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(store: Store, sql: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if store.path.exists() and not store.query(sql).empty:
                return
        except Exception:  # noqa: BLE001 - the writer holds the file a moment
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for: {sql}")


def test_a_killed_driver_is_resumed_with_the_same_executor_and_cancel_stops_a_ray_run(ray_instance, data, tmp_path):
    from core.jobs.launch import cancel
    from core.jobs.lifecycle import mark_interrupted

    local, runs = Store(tmp_path / "local"), tmp_path / "ray"
    cfg = _cfg(data, max_iterations=30, eval_every=10, gradcam=False)
    run_cross_validation(cfg, store=local, run_id="ref")
    store = Store(runs)
    config = tmp_path / "ray-config.json"
    config.write_text(cfg.replace(executor="ray").to_json())  # the whole typed config, as the dashboard's jobs pass it
    base = ["run", "--config", str(config)]
    # the driver killed once a fold is in: the run reads as interrupted, and resume finishes it on Ray
    proc = _start_driver([*base, "--run-id", "k"], runs)
    _wait_for(store, "SELECT fold FROM folds WHERE run_id = 'k' AND status = 'finished'")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    mark_interrupted(store)
    assert store.run("k")["status"] == "interrupted"
    resume_cross_validation(store, "k")
    assert store.run("k")["status"] == "finished" and "ray:" in store.run("k")["device"]
    assert_same_rows(local, "ref", store, "k")
    # Cancel: the driver stops its tasks, keeps its finished folds and says so
    proc = _start_driver([*base, "--run-id", "c"], runs)
    _wait_for(store, "SELECT run_id FROM iterations WHERE run_id = 'c'")
    assert cancel(runs, "c")
    assert proc.wait(timeout=60) != 0
    assert store.run("c")["status"] == "cancelled"


def test_a_two_node_cluster_runs_folds_on_both_nodes_and_survives_losing_one(data, tmp_path):
    """ray.cluster_utils.Cluster: two raylets on this machine, one CPU each, the driver joining by address. A first run
    spreads its folds over both; in a second, the same, the worker node is removed while folds train on it: Ray runs
    them again on the head, and the run ends with the first run's rows."""
    script = tmp_path / "cluster.py"
    script.write_text(f"""
import json
import sys
import threading
import time
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
import ray
from ray.cluster_utils import Cluster
from conftest import tiny_config
from core.results.store import Store
from core.training.engine import run_cross_validation

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
worker = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, runtime_env={{"env_vars": {{"PYTHONPATH": {str(ROOT)!r}}}}})
cfg = tiny_config({str(data)!r}, batch_size=8, folds=4, max_iterations=40, eval_every=20, gradcam=False, executor="ray")
store = Store({str(tmp_path / 'runs')!r})
run_cross_validation(cfg, store=store, run_id="two")
result = {{"nodes": sorted(set(store.folds("two")["node"])), "device": store.run("two")["device"]}}
done = threading.Event()
threading.Thread(target=lambda: (run_cross_validation(cfg, store=store, run_id="lost"), done.set()), daemon=True).start()
while store.query("SELECT run_id FROM iterations WHERE run_id = 'lost'").empty:  # folds are training
    time.sleep(0.2)
cluster.remove_node(worker)
done.wait(240)
result.update(status=store.run("lost")["status"], after=sorted(set(store.folds("lost")["node"])))
print("RESULT " + json.dumps(result))
ray.shutdown()
cluster.shutdown()
""")
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(result["nodes"]) == 2, result
    assert result["device"].startswith("ray: 2 nodes, 2 CPUs")
    assert result["status"] == "finished", result
    assert len(result["after"]) == 1, result  # the worker left mid-fold: every fold of the second run ended on the head
    store = Store(tmp_path / "runs")
    assert_same_rows(store, "two", store, "lost")  # the folds that ran again trained exactly as the first time


def test_the_ray_benchmark_times_both_executors_on_the_same_sweep(ray_instance, tmp_path):
    from bench.ray import report, run_ray_bench

    result = run_ray_bench(tiny=True, out=tmp_path / "ray.json", log=lambda line: None)
    assert result["local_s"] > 0 and result["ray_s"] > 0 and result["ratio"] == pytest.approx(result["ray_s"] / result["local_s"])
    assert result["cluster"].startswith("ray: 1 node") and len(result["auc_ray"]) == 2
    assert json.loads((tmp_path / "ray.json").read_text())["kind"] == "ray"
    assert "ratio ray / local" in report(result)


def test_the_cluster_command_reports_nodes_cpus_and_gpus_as_json(tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "cluster"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    c = json.loads(out.stdout.strip().splitlines()[-1])
    assert c["nodes"] == 1 and c["cpus"] >= 1 and c["gpus"] == 0 and set(c) >= {"free_cpus", "free_gpus", "hosts"}
    bad = subprocess.run([sys.executable, "-m", "core", "cluster", "--ray-address", "127.0.0.1:1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "could not reach a Ray cluster" in bad.stderr
