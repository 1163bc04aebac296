"""Folds as Ray tasks: a run's folds, or every fold of a sweep's runs, spread over the CPUs, GPUs and machines of
a Ray cluster, with this process as the one writer to the store.

Why Ray and not something of ours: it schedules tasks by declared resources (fractional GPUs included),
retries a task whose worker process or machine died, moves the data set through its object store, and
runs the same code on a laptop (a private instance) and on a cluster (`ray start --head`, then
`ray start --address=HEAD:6379` on each worker machine). So there is no scheduler, queue or retry
logic here, only the mapping:

- a task is one fold: (config, the data set's reference, the splits, the fold) -> FoldResult, the very
  function a local run uses (`core.training.engine.train_pack_results`), so a fold trains the same
  wherever it runs;
- the decoded data set (uint8 pixels, labels, lesion masks read here) is put into the object store once
  and shared by every task: a worker machine needs neither the image files nor the cache folder;
- workers stream their curve rows to a small actor (ProgressSink) that the driver drains every second
  into the store, so the Train page's live view, time left and Cancel work as for a local run;
- the driver writes each returned fold exactly as a local run does (engine.write_fold) and pools a run
  when its last fold is in. A fold whose worker died is retried by Ray from its first iteration (folds
  are seeded, so the retry trains identically) and its rows are written once, from the result;
  an error of ours (a diverged fold, a bad setting) is not retried and fails its run as locally.

Ray is imported only here, so a local run never pays for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from core import CxrError
from core.config import RunConfig
from core.data.prepare import PreparedData
from core.results.store import IterationBuffer, Store, now

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
# What a worker on another machine gets of this checkout (Ray honours .gitignore too: no runs, data or venv).
CODE_EXCLUDES = ["runs", "data", ".venv", ".git", "tests", "bench", "docs"]


@contextmanager
def ray_session(address: str) -> Iterator:
    """Ray, connected: a private instance on this machine for '' (stopped afterwards), or the running cluster at
    `address` ('auto' or HOST:PORT), to which this checkout's code is shipped. An instance already started in this
    process (tests start one per session) is used as it is."""
    try:
        import ray
    except ImportError:
        raise CxrError("executor=ray needs Ray: pip install -r requirements.txt (it pins ray)") from None
    if ray.is_initialized():
        yield ray
        return
    if address and address != "auto":
        _check_reachable(address)
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, runtime_env={"working_dir": str(ROOT), "excludes": CODE_EXCLUDES}, **options)
        else:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, **options)
    except ConnectionError as exc:
        raise CxrError(f"could not reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head`, "
                       "or leave ray_address empty for a private instance on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """HOST:PORT answers a TCP connection, or a one-line error at once (ray.init would keep retrying for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CxrError(f"ray_address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise CxrError(f"could not reach a Ray cluster at {address!r} ({exc.strerror or exc}); start one with `ray start --head`, "
                       "or leave ray_address empty for a private instance on this machine") from None


def cluster_summary(ray) -> dict:
    """Nodes, CPUs and GPUs of the connected cluster, in all and free now."""
    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0),
            "free_cpus": free.get("CPU", 0.0), "free_gpus": free.get("GPU", 0.0),
            "hosts": sorted({n.get("NodeManagerHostname", "?") for n in nodes})}


def describe_cluster(summary: dict) -> str:
    return (f"ray: {summary['nodes']} node{'s' if summary['nodes'] != 1 else ''}, {summary['cpus']:g} CPUs, "
            f"{summary['gpus']:g} GPUs")


def gpus_per_fold(cfg: RunConfig, cluster_gpus: float) -> float:
    """-1 means one GPU per fold where the cluster has GPUs, none where it has not."""
    if cfg.gpus_per_fold >= 0:
        return cfg.gpus_per_fold
    return 1.0 if cluster_gpus > 0 else 0.0


def shippable(data: PreparedData) -> PreparedData:
    """What a worker needs of the data set, with the lesion masks read here (a worker on another machine has no files):
    no manifest table, no tensors cached on this process's devices."""
    masks = None
    if data.mask_paths:
        from core.training.explain import load_mask

        size = int(data.pixels.shape[-1])
        masks = [load_mask(p, size) if p else None for p in data.mask_paths]
    slim = dataclasses.replace(data, manifest=None, mask_paths=masks)
    slim.__dict__.pop("_resident_pixels", None)
    return slim


class _Pusher:
    """Batches a worker's progress rows and sends them to the sink about once a second (not one call per row)."""

    def __init__(self, sink, run_id: str, interval_s: float = 1.0) -> None:
        self.sink, self.run_id, self.interval_s = sink, run_id, interval_s
        self.rows: list[dict] = []
        self.last = time.monotonic()

    def row(self, fold: int, row: dict) -> None:
        self.rows.append({"run_id": self.run_id, "fold": fold, **row})
        if time.monotonic() - self.last >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.sink.push.remote(self.rows)
            self.rows = []
        self.last = time.monotonic()


FAULTS_ENV = "CXR_RAY_FAULTS_DIR"


def _fault_hook(run_id: str, fold: int):
    """For the fault tests only: where $CXR_RAY_FAULTS_DIR holds a file `<run_id>-<fold>` naming an iteration, the
    worker claims (deletes) it and dies at that iteration, as a killed process would; the retry then finds no file."""
    folder = os.environ.get(FAULTS_ENV)
    marker = Path(folder) / f"{run_id}-{fold}" if folder else None
    if marker is None or not marker.is_file():
        return None
    at = int(marker.read_text())

    def maybe_die(row: dict) -> None:
        if row.get("phase") == "train" and row.get("iteration") == at and marker.exists():
            marker.unlink()
            os._exit(1)

    return maybe_die


def _fold_task(cfg_json: str, data: PreparedData, fold_of: np.ndarray, fold: int, run_id: str, sink):
    """One fold on a Ray worker: the local engine's own training and scoring, on the GPU Ray assigned if any."""
    import ray
    import torch

    from core.training.engine import resolve_device, train_pack_results
    from core.training.runtime import setup_device

    began = now()  # the fold's started_at: not when the driver submitted it (time-left estimates use fold wall times)
    cfg = RunConfig.from_json(cfg_json)
    device = torch.device("cuda") if ray.get_gpu_ids() and cfg.device != "cpu" else resolve_device("cpu" if cfg.device == "auto" else cfg.device)
    # as many threads as the CPUs the task reserved (0 = "the physical cores" would have every task on a node use all of them)
    setup_device(device, cfg.num_threads or max(1, int(cfg.cpus_per_fold)))
    node = f"{socket.gethostname()} (ray node {ray.get_runtime_context().get_node_id()[:8]})"
    pusher = _Pusher(sink, run_id)
    die = _fault_hook(run_id, fold)

    def on_iteration(k: int, row: dict) -> None:
        pusher.row(k, row)
        if die is not None:
            pusher.flush()  # the rows before the fault reach the store, as a real crash would leave them
            die(row)
    try:
        results = train_pack_results(cfg, data, fold_of, [fold], device=device, on_iteration=on_iteration)
    finally:
        pusher.flush()
    result = results[0]
    result.node = node
    result.row["started_at"] = began
    result.curve = [dict(r) for r in result.curve]
    return result


def _sink_class(ray):
    @ray.remote(num_cpus=0)
    class ProgressSink:
        """Where workers leave their curve rows until the driver drains them (the driver is the only writer)."""

        def __init__(self) -> None:
            self.rows: list[dict] = []

        def push(self, rows: list[dict]) -> None:
            self.rows.extend(rows)

        def drain(self) -> list[dict]:
            rows, self.rows = self.rows, []
            return rows

    return ProgressSink


@dataclasses.dataclass
class _RunState:
    plan: object  # core.training.engine.RunPlan
    left: set[int]
    train_seconds: float
    started: object  # when its folds were submitted (the folds table's started_at)
    clock: float
    error: BaseException | None = None


def train_on_ray(plans: list, *, store: Store, progress=None) -> list:
    """Train every fold of every plan as one pool of Ray tasks; write and pool each run here. Returns the RunResults
    in plan order; raises the first run's error after every other run has finished (or failed) too."""
    from core.training.engine import RunResult, _end, _finish, save_diverged_fold, write_fold
    from core.training.train import DivergedError

    emit = progress or (lambda event: None)
    cfg0: RunConfig = plans[0].cfg
    with ray_session(cfg0.ray_address) as ray:
        summary = cluster_summary(ray)
        where = describe_cluster(summary)
        emit({"event": "note", "text": f"{where} ({', '.join(summary['hosts'])}); "
                                       f"{sum(len(p.todo) for p in plans)} fold tasks for {len(plans)} run(s)"})
        # on the driver's own node: a worker node that leaves the cluster must not take the progress rows' mailbox with it
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
        sink = _sink_class(ray).options(scheduling_strategy=here, max_restarts=-1).remote()
        task = ray.remote(_fold_task)
        pending: dict = {}  # ObjectRef -> (run_id, fold)
        states: dict[str, _RunState] = {}
        data_refs: dict = {}
        for plan in plans:
            cfg = plan.cfg
            key = (plan.data.dataset_id, plan.data.pixels.shape)
            if key not in data_refs:  # once per data set and image size: a sweep's runs share it
                data_refs[key] = ray.put(shippable(plan.data))
            gpus = gpus_per_fold(cfg, summary["gpus"])
            store.update_run(plan.run_id, device=f"{where}; {cfg.cpus_per_fold:g} CPU and {gpus:g} GPU per fold")
            states[plan.run_id] = _RunState(plan, set(plan.todo), plan.prior_train_seconds, now(), time.perf_counter())
            options = {"num_cpus": cfg.cpus_per_fold, "num_gpus": gpus, "max_retries": 3, "retry_exceptions": False}
            for fold in plan.todo:
                ref = task.options(**options).remote(cfg.to_json(), data_refs[key], plan.fold_of, fold, plan.run_id, sink)
                pending[ref] = (plan.run_id, fold)
        buffer = IterationBuffer(store, interval_s=1.0)
        results: dict[str, RunResult] = {}

        def drain() -> None:
            try:
                rows = ray.get(sink.drain.remote(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - live rows only: each fold's result carries all of them anyway
                log.warning("progress rows could not be read this time (%s); the folds' results will carry them", exc)
                return
            for row in rows:
                if row["run_id"] in states and states[row["run_id"]].error is None:
                    buffer.add(row)
            buffer.flush()

        def fail(state: _RunState, exc: BaseException) -> None:
            state.error = exc
            for ref, (run_id, _) in list(pending.items()):
                if run_id == state.plan.run_id:
                    ray.cancel(ref, force=True)
                    pending.pop(ref)
            message = str(exc) if isinstance(exc, CxrError) else f"{type(exc).__name__}: {exc}"
            _end(store, state.plan.run_id, status="failed", error=message)

        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                drain()
                for ref in ready:
                    if ref not in pending:
                        continue
                    run_id, fold = pending.pop(ref)
                    state = states[run_id]
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the task's own error, unwrapped, decides
                        cause = getattr(exc, "cause", None) or exc
                        buffer.flush(force=True)
                        if isinstance(cause, DivergedError):
                            save_diverged_fold(store, run_id, cause, state.plan.fold_of, started=state.started)
                        fail(state, cause)
                        continue
                    try:  # every row of the fold from the result: a retried fold's rows are exactly a clean fold's
                        store.save_iterations([{"run_id": run_id, "fold": result.fold, **row} for row in result.curve])
                        write_fold(store, run_id, result, started=state.started)
                    except Exception as exc:  # noqa: BLE001 - a full disk, say: this run fails, the others go on
                        fail(state, exc)
                        continue
                    state.train_seconds += result.train_seconds
                    state.left.discard(result.fold)
                    emit({"event": "fold_end", "fold": result.fold, "metrics": result.metrics, "train_seconds": result.train_seconds,
                          "run_id": run_id, "node": result.node})
                    if not state.left:
                        plan = state.plan
                        try:
                            results[run_id] = _finish(plan.cfg, plan.data, run_id, store, train_seconds=state.train_seconds,
                                                      total_seconds=plan.prior_total_seconds + time.perf_counter() - state.clock,
                                                      weights_used=plan.weights_used)
                        except Exception as exc:  # noqa: BLE001
                            fail(state, exc)
                            continue
                        emit({"event": "run_end", "run_id": run_id, "metrics": results[run_id].metrics,
                              "auc_mean_folds": results[run_id].auc_mean_folds})
            drain()
            buffer.flush(force=True)
        except KeyboardInterrupt:  # Cancel (SIGINT): stop every task, keep every finished fold
            for ref in pending:
                ray.cancel(ref, force=True)
            buffer.flush(force=True)
            for run_id, state in states.items():
                if run_id not in results and state.error is None:
                    _end(store, run_id, status="cancelled", error="cancelled by the user")
            raise
    errors = [s.error for s in states.values() if s.error is not None]
    if errors:
        first = errors[0]
        if isinstance(first, CxrError):
            raise first
        raise CxrError(f"{type(first).__name__}: {first}")
    return [results[p.run_id] for p in plans]
