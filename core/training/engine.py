"""k-fold cross-validation of one RunConfig: prepare data, split, train and evaluate every fold, land it all in the store.

Each fold is an independent job (config + split + fold index -> results), written to the
store as soon as it ends, so a crash keeps every finished fold.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torchvision

from core import CxrError, __version__
from core.config import RESULT_NEUTRAL, RunConfig, apply_overrides, auto_name, budget
from core.data.prepare import PreparedData, cache_dir_for, prepare_data
from core.data.splits import assign_repeated_folds, audit_leakage, held_out
from core.training.explain import explain_fold, summarize_localisation
from core.jobs.gpuqueue import gpu_slot
from core.ids import new_run_id
from core.jobs.lifecycle import check_resumable, current_process
from core.training.metrics import summarize
from core.training.models import build_model
from core.training.runtime import execution_for, pack_size, plan_packs, resident_pixels, setup_device
from core.results.store import DiskFullError, IterationBuffer, Store, is_disk_full, now
from core.training.train import DivergedError, FoldData, FoldOutcome, step_shape, train_folds

# Progress events: {"event": "loading"|"run_start"|"queued"|"fold_start"|"iteration"|"fold_end"|"run_end", ...}
Progress = Callable[[dict], None]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    metrics: dict  # pooled out-of-fold metrics (the study's numbers are pooled)
    auc_mean_folds: float
    weights_used: str


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CxrError("device=cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def needs_gpu_slot(device: torch.device) -> bool:
    """CUDA runs take turns on the GPU (core/jobs/gpuqueue.py); CPU runs never wait."""
    return device.type == "cuda"


def code_version() -> str:
    """The git commit of this checkout when there is one (marked -dirty if edited), else the package version."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return f"{__version__}+{sha.stdout.strip()}{'-dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


@dataclass
class RunPlan:
    """A run created in the store (config, data, splits), with the folds it still has to train.

    Made by `begin_run` (a new run) or `begin_resume` (the unfinished folds of an old one); trained by
    `train_plan` here, or with other plans in one pool of Ray tasks (core/training/ray_executor.py).
    """

    cfg: RunConfig
    data: PreparedData
    fold_of: np.ndarray  # (repeats, N): fold number of each image in each repeat, in data.image_ids order
    todo: list[int]  # the folds to train
    run_id: str
    device: torch.device
    weights_used: str
    prior_train_seconds: float = 0.0  # of the folds a resumed run had finished
    prior_total_seconds: float = 0.0


def run_cross_validation(
    cfg: RunConfig,
    *,
    store: Store,
    preset: str = "",
    name: str = "",
    progress: Progress | None = None,
    run_id: str | None = None,
    sweep_id: str = "",
    fixed_splits: dict[str, list[int]] | None = None,
) -> RunResult:
    """Run the whole k-fold protocol for `cfg` and store everything; returns the pooled result.

    Raises:
        CxrError: for anything the user can fix (data, weights, store); the run is then marked
        failed in the store if it had been created.

    `fixed_splits` (image_id -> its fold in each repeat) reuses another run's folds, so that runs of a sweep are
    evaluated on identical splits and paired tests between them are valid. With `executor=ray`
    the folds are Ray tasks (core/training/ray_executor.py); the results land in the store the same way.
    """
    plan = begin_run(cfg, store=store, preset=preset, name=name, progress=progress, run_id=run_id, sweep_id=sweep_id,
                     fixed_splits=fixed_splits)
    return train_plans([plan], store=store, progress=progress)[0]


def train_plans(plans: list[RunPlan], *, store: Store, progress: Progress | None = None) -> list[RunResult]:
    """Train the plans' folds with their executor: here, one run after another, or all in one Ray pool."""
    if plans and plans[0].cfg.executor == "ray":
        from core.training.ray_executor import train_on_ray

        return train_on_ray(plans, store=store, progress=progress)
    return [train_plan(plan, store=store, progress=progress) for plan in plans]


def train_plan(plan: RunPlan, *, store: Store, progress: Progress | None = None) -> RunResult:
    """Train a plan's folds in this process (packs of folds stacked where that is faster), then pool."""
    return _train_folds(plan.cfg, plan.data, plan.fold_of, plan.todo, run_id=plan.run_id, store=store, device=plan.device,
                        emit=progress or (lambda event: None), weights_used=plan.weights_used,
                        prior_train_seconds=plan.prior_train_seconds, prior_total_seconds=plan.prior_total_seconds)


def begin_run(
    cfg: RunConfig,
    *,
    store: Store,
    preset: str = "",
    name: str = "",
    progress: Progress | None = None,
    run_id: str | None = None,
    sweep_id: str = "",
    fixed_splits: dict[str, list[int]] | None = None,
) -> RunPlan:
    """Prepare the data, split it, check the weights and create the run in the store: everything before the first fold."""
    emit = progress or (lambda event: None)
    device = resolve_device(cfg.device)
    setup_device(device, cfg.num_threads)
    run_id = run_id or new_run_id()
    store.ensure_writable()  # a runs folder that cannot be written stops the run before any decoding

    emit({"event": "stage", "text": "reading data set"})
    excluded = store.label_errors(cfg.data) if cfg.exclude_label_errors else None  # reviewers' label errors (core/review/)
    data = prepare_data(cfg, cache_dir=cache_dir_for(store.runs_dir), progress=lambda d, t: emit({"event": "loading", "done": d, "total": t}),
                        excluded=excluded)
    # Build one model up front: a missing ImageNet file or a bad weights file stops the run before any training.
    _, weights = build_model(cfg.backbone, len(data.classes), cfg.weights)
    groups = data.groups if cfg.group_by_patient else None
    if fixed_splits is not None:
        if set(fixed_splits) != set(data.image_ids):
            raise CxrError("this run's images differ from the sweep's first run, so its splits cannot be reused")
        fold_of = np.array([fixed_splits[i] for i in data.image_ids]).T  # (repeats, N)
        if len(fold_of) != cfg.repeats:
            raise CxrError(f"the sweep's first run has {len(fold_of)} repeats but this one asks for {cfg.repeats}; sweep repeats in "
                           "separate sweeps")
    elif data.user_folds is not None:
        fold_of = data.user_folds[None]
        if int(fold_of.max()) + 1 != cfg.folds:
            raise CxrError(f"fold column {cfg.fold_column!r} holds {int(fold_of.max()) + 1} folds but folds={cfg.folds}; "
                           f"pass --set folds={int(fold_of.max()) + 1}")
    else:
        fold_of = assign_repeated_folds(data.labels, groups, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed, class_names=data.classes)
    # Audit the split actually used against the patient ids, whoever made it; a leaking split only runs when the
    # user turned grouping off on purpose, and the run carries the audit so every report can say so.
    audit = audit_leakage(fold_of, data.groups)
    if audit.status == "leaks" and cfg.group_by_patient:
        raise CxrError(f"the split would leak patients between training and test: {audit.message}. Fix the fold column or the "
                       "patient ids, or turn grouping off on purpose with --set group_by_patient=false (the run is then marked as leaking)")

    store.save_dataset(data.dataset_id, source=data.manifest.source, root=data.manifest.root, synthetic=data.manifest.synthetic, table=data.manifest.table, classes=data.classes,
                       flow=data.manifest.flow)
    store.create_run(
        run_id,
        name=name or auto_name(cfg, preset),
        preset=preset,
        sweep_id=sweep_id or None,
        started_at=now(),
        config=cfg.to_json(),
        dataset_id=data.dataset_id,
        synthetic=data.manifest.synthetic,
        code_version=code_version(),
        device=_device_name(device, cfg),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        weights_used=weights.used,
        weights_message=weights.message,
        classes=json.dumps(data.classes),
        positive_class=data.classes[data.positive],
        n_images=len(data.labels),
        folds=cfg.folds,
        grouped=groups is not None,
        leak_status=audit.status,
        leakage=audit.message,
        **_owner(),
    )
    store.save_splits(run_id, data.image_ids, fold_of)
    emit(_run_start_event(run_id, cfg, data, weights, device))
    return RunPlan(cfg, data, fold_of, list(range(cfg.folds * cfg.repeats)), run_id=run_id, device=device, weights_used=weights.used)


def resume_cross_validation(store: Store, run_id: str, *, device: str | None = None, progress: Progress | None = None,
                            overrides: list[str] = ()) -> RunResult:
    """Continue a failed, cancelled or interrupted run under the same run id, with its stored config and splits
    (and its executor: a run started on Ray resumes on Ray). See `begin_resume`."""
    plan = begin_resume(store, run_id, device=device, progress=progress, overrides=overrides)
    return train_plans([plan], store=store, progress=progress)[0]


def begin_resume(store: Store, run_id: str, *, device: str | None = None, progress: Progress | None = None,
                 overrides: list[str] = ()) -> RunPlan:
    """Continue a failed, cancelled or interrupted run under the same run id, with its stored config and splits.

    Finished folds are kept as they are; every other fold first loses what a dying process
    left of it (curve, predictions, heat-map index) and then trains again, so the finished run
    holds exactly the rows a clean run would. The data set must be the same images (same
    fingerprint) and the weights the same as before, or the folds would not belong together.

    Raises:
        CxrError: a finished run, a run whose process still lives, a diverged run, changed data or weights.
    """
    emit = progress or (lambda event: None)
    run = check_resumable(store, run_id)
    cfg = RunConfig.from_json(run["config"])
    if device:
        cfg = cfg.replace(device=device)
    if overrides:  # where it computes (executor, ray_address), never what: those settings change no result
        cfg = apply_overrides(cfg, list(overrides))
        if any(k.split("=")[0] not in RESULT_NEUTRAL for k in overrides):
            raise CxrError("resume may change only where a run computes (executor, ray_address), not its settings")
    dev = resolve_device(cfg.device)
    setup_device(dev, cfg.num_threads)
    store.ensure_writable()
    try:
        emit({"event": "stage", "text": "reading data set"})
        excluded = None
        if cfg.exclude_label_errors:  # the label errors the run started without, not those tagged since (same fingerprint)
            images = store.images(run["dataset_id"])
            excluded = {i: r for i, r in zip(images["image_id"], images["excluded_reason"]) if str(r).startswith("label error")}
        data = prepare_data(cfg, cache_dir=cache_dir_for(store.runs_dir), progress=lambda d, t: emit({"event": "loading", "done": d, "total": t}),
                            excluded=excluded)
        if data.dataset_id != run["dataset_id"]:
            raise CxrError(f"the data set changed since run {run_id} started (fingerprint {data.dataset_id}, was {run['dataset_id']}); "
                           "resume needs the same images: restore them, or start a new run")
        _, weights = build_model(cfg.backbone, len(data.classes), cfg.weights)
        if weights.used != run["weights_used"]:
            raise CxrError(f"run {run_id} trained with weights {run['weights_used']} but would now get {weights.used}; "
                           "its folds would not be comparable: start a new run")
        fold_of = _stored_splits(store, run_id, data)
    except CxrError as exc:  # say it where the pages look, then stop
        store.update_run(run_id, status="failed", error=f"resume: {exc}")
        raise
    done = store.folds(run_id, every_repeat=True)
    done = done[done["status"] == "finished"] if not done.empty else done
    every = range(cfg.folds * cfg.repeats)
    todo = [k for k in every if k not in set(done["fold"].astype(int))] if not done.empty else list(every)
    store.clear_folds(run_id, todo)
    store.update_run(run_id, status="running", error=None, finished_at=None, device=_device_name(dev, cfg), resumes=int(run.get("resumes") or 0) + 1,
                     **({"config": cfg.to_json()} if overrides else {}), **_owner())
    emit({**_run_start_event(run_id, cfg, data, weights, dev), "resumed_folds": len(done)})
    prior = float((done["train_seconds"].sum() if not done.empty else 0.0))
    prior_total = float((done["train_seconds"] + done["eval_seconds"]).sum()) if not done.empty else 0.0
    return RunPlan(cfg, data, fold_of, todo, run_id=run_id, device=dev, weights_used=weights.used, prior_train_seconds=prior,
                   prior_total_seconds=prior_total)


def _owner() -> dict:
    """Who runs the run now: pid, host and process start token (core/jobs/lifecycle.py tells a reused pid apart)."""
    me = current_process()
    return {"pid": me.pid, "host": me.host, "pid_start": me.token}


def _run_start_event(run_id: str, cfg: RunConfig, data: PreparedData, weights, device: torch.device) -> dict:
    return {"event": "run_start", "run_id": run_id, "folds": cfg.folds * cfg.repeats, "weights": weights, "n_images": len(data.labels),
            "n_excluded": int((data.manifest.table["excluded_reason"] != "").sum()), "device": _device_name(device, cfg),
            "synthetic": data.manifest.synthetic}


def _stored_splits(store: Store, run_id: str, data: PreparedData) -> np.ndarray:
    """The (repeats, N) folds a run stored, in `data.image_ids` order; the images must be exactly the run's."""
    table = store.all_splits(run_id)
    rows = []
    for _, split in table.groupby("repeat", sort=True):
        stored = dict(zip(split["image_id"], split["fold"].astype(int)))
        if set(stored) != set(data.image_ids):
            raise CxrError(f"run {run_id} stored splits for {len(stored)} images but the data set has {len(data.image_ids)} usable ones; "
                           "resume needs the same images")
        rows.append([stored[i] for i in data.image_ids])
    if not rows:
        raise CxrError(f"run {run_id} stored no splits; start a new run")
    return np.array(rows)


def _train_folds(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, todo: list[int], *, run_id: str, store: Store,
                 device: torch.device, emit: Progress, weights_used: str, prior_train_seconds: float = 0.0,
                 prior_total_seconds: float = 0.0) -> RunResult:
    """Train the folds in `todo` (all, or those a resume still needs), then pool; every ending is written to the run's status."""
    run_start = time.perf_counter()
    folds_now = todo[:1]  # the fold(s) in progress, for the disk-full message
    try:
        with _gpu_turn(store, run_id, device, emit):
            train_seconds = prior_train_seconds
            size = pack_size(cfg.parallel_folds, device=device, batch_size=cfg.batch_size, image_size=cfg.image_size, folds=len(todo))
            for pack in plan_packs(todo, size, {k: step_shape(cfg, int((~held_out(fold_of, k)).sum())) for k in todo}):
                folds_now = pack
                train_seconds += _run_pack(cfg, data, fold_of, pack, run_id=run_id, store=store, device=device, emit=emit)
            result = _finish(cfg, data, run_id, store, train_seconds=train_seconds,
                             total_seconds=prior_total_seconds + time.perf_counter() - run_start, weights_used=weights_used)
    except KeyboardInterrupt:
        _end(store, run_id, status="cancelled", error="cancelled by the user")
        raise
    except (DiskFullError, OSError) as exc:
        if not (isinstance(exc, DiskFullError) or is_disk_full(exc)):
            _end(store, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        which = ("fold " if len(folds_now) == 1 else "folds ") + ", ".join(str(k + 1) for k in folds_now)
        message = (f"the disk holding {store.runs_dir} is full (no space left on device) while saving {which}; folds finished "
                   f"before it are kept: free some space, then continue with: python -m core resume {run_id}")
        _end(store, run_id, status="failed", error=message)
        raise CxrError(message) from None
    except CxrError as exc:  # the message already says what to do (a diverged fold, ...)
        _end(store, run_id, status="failed", error=str(exc))
        raise
    except Exception as exc:
        _end(store, run_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    emit({"event": "run_end", "run_id": run_id, "metrics": result.metrics, "auc_mean_folds": result.auc_mean_folds})
    return result


@contextmanager
def _gpu_turn(store: Store, run_id: str, device: torch.device, emit: Progress) -> Iterator[None]:
    """The GPU for this run, queued behind another CUDA run of this runs folder if need be; nothing to wait for on a CPU."""
    if not needs_gpu_slot(device):
        yield
        return
    waited: list[str] = []

    def wait(holder: str) -> None:
        waited.append(holder)
        store.update_run(run_id, status="queued")
        emit({"event": "queued", "run_id": run_id, "holder": holder})

    with gpu_slot(store.runs_dir, run_id, on_wait=wait):
        if waited:
            store.update_run(run_id, status="running")
        yield


def _end(store: Store, run_id: str, *, status: str, error: str) -> None:
    """Record how the run ended; if even that cannot be written (a full disk), the run reads as interrupted later."""
    try:
        store.update_run(run_id, status=status, finished_at=now(), error=error)
    except Exception:  # noqa: BLE001 - the original error is the one worth raising
        pass


class _PackTooBig(Exception):
    """The GPU ran out of memory while a pack of several folds trained (nothing of the pack was saved)."""


def _run_pack(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, pack: list[int], *, run_id: str, store: Store,
              device: torch.device, emit: Progress) -> float:
    """Train the folds of `pack` together and save each; a pack that does not fit in GPU memory is split in two and retried.

    Training is seeded per fold, so a retried fold trains exactly as it would have the first time;
    what the failed attempt had written of its curve is removed first.
    """
    try:
        return _train_pack(cfg, data, fold_of, pack, run_id=run_id, store=store, device=device, emit=emit)
    except _PackTooBig as exc:
        reason = str(exc)
    # Retried outside the handler, so the failed attempt's tensors (held by the traceback) can be freed first.
    half = (len(pack) + 1) // 2
    log.warning("folds %s did not fit in GPU memory together (%s); training them in packs of %d", [k + 1 for k in pack], reason, half)
    emit({"event": "stage", "text": f"{len(pack)} folds at once did not fit in GPU memory: {half} at a time instead"})
    store.clear_folds(run_id, pack)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return sum(_run_pack(cfg, data, fold_of, part, run_id=run_id, store=store, device=device, emit=emit)
               for part in (pack[:half], pack[half:]))


@dataclass
class FoldResult:
    """What one trained fold produced, before anything is written: the one writer (this process, or the Ray
    driver receiving it from a worker) turns it into the fold's row, predictions, heat maps and model file."""

    fold: int
    row: dict  # the folds table row: sizes, iterations, times, metrics (started_at/finished_at added when written)
    metrics: dict
    predictions: pd.DataFrame
    cam_arrays: dict  # the heat maps to save (core.training.explain.explain_fold), empty without Grad-CAM
    cam_rows: list[dict]
    model_state: dict | None  # the state dict on the CPU, when save_models
    curve: list[dict]  # every curve row of the fold (phase, iteration, ...), as the live view got them
    train_seconds: float
    node: str  # the machine it trained on


def fold_jobs(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, pack: list[int], pixels: torch.Tensor) -> list[FoldData]:
    """A freshly built model and the train/test images of each fold of `pack`, the new head seeded by (seed, fold)."""
    labels = torch.from_numpy(data.labels)
    jobs = []
    for fold in pack:
        test = held_out(fold_of, fold)
        train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, fold, 0]).generate_state(1)[0]))  # the new head's init
        model, _ = build_model(cfg.backbone, len(data.classes), cfg.weights)
        jobs.append(FoldData(fold, model, pixels[train_idx], labels[train_idx], pixels[test_idx], labels[test_idx]))
    return jobs


def train_pack_results(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, pack: list[int], *, device: torch.device,
                       on_iteration: Callable[[int, dict], None], on_fold_start: Progress = lambda event: None) -> list[FoldResult]:
    """Train the folds of `pack` together and score each (metrics, predictions, heat maps): no store, so a Ray
    worker runs exactly this. Raises DivergedError for a fold whose training blew up."""
    pixels = resident_pixels(data, device)  # on the GPU once per run; batches are gathered there
    jobs = fold_jobs(cfg, data, fold_of, pack, pixels)
    for job in jobs:
        on_fold_start({"event": "fold_start", "fold": job.fold, "folds": cfg.folds * cfg.repeats, "n_train": len(job.x_train), "n_test": len(job.x_test),
                       "iterations": budget(cfg, len(job.x_train))[0], "pack": pack})
    outcomes = train_folds(cfg, jobs, device=device, on_iteration=on_iteration)
    for job, outcome in zip(jobs, outcomes):
        if not np.isfinite(outcome.test_probs).all():  # finite losses, yet the last step blew the weights up
            raise DivergedError(job.fold, outcome.iterations, float("nan"), cfg.learning_rate)
    return [score_fold(cfg, data, fold_of, job.fold, outcome, pixels, device=device) for job, outcome in zip(jobs, outcomes)]


def _train_pack(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, pack: list[int], *, run_id: str, store: Store,
                device: torch.device, emit: Progress) -> float:
    """Train and evaluate the folds of `pack` (one, or several stacked), then write each fold's metrics, curve and predictions."""
    started = now()
    buffer = IterationBuffer(store)

    def on_iteration(fold: int, row: dict) -> None:
        buffer.add({"run_id": run_id, "fold": fold, **row})
        emit({"event": "iteration", "fold": fold, **row})

    try:
        results = train_pack_results(cfg, data, fold_of, pack, device=device, on_iteration=on_iteration, on_fold_start=emit)
        buffer.flush(force=True)
    except torch.OutOfMemoryError as exc:
        if len(pack) == 1:
            raise
        raise _PackTooBig(str(exc).splitlines()[0] if str(exc) else "out of memory") from None
    except DivergedError as exc:  # the curve up to the blow-up stays for inspection; no metrics from garbage
        buffer.flush(force=True)
        save_diverged_fold(store, run_id, exc, fold_of, started=started)
        raise
    for result in results:
        write_fold(store, run_id, result, started=started)
        emit({"event": "fold_end", "fold": result.fold, "metrics": result.metrics, "train_seconds": result.train_seconds})
    return sum(result.train_seconds for result in results)


def save_diverged_fold(store: Store, run_id: str, exc: DivergedError, fold_of: np.ndarray, *, started) -> None:
    """The diverged fold's row (its curve is already stored): no metrics, no predictions."""
    test = held_out(fold_of, exc.fold)
    store.save_fold(run_id, {"fold": exc.fold, "status": "diverged", "n_train": int((~test).sum()),
                             "n_test": int(test.sum()), "iterations": exc.iteration, "started_at": started,
                             "finished_at": now()}, pd.DataFrame())


def score_fold(cfg: RunConfig, data: PreparedData, fold_of: np.ndarray, fold: int, outcome: FoldOutcome, pixels: torch.Tensor, *,
               device: torch.device) -> FoldResult:
    """One trained fold's metrics, out-of-fold predictions and heat maps, ready to be written.

    A later repeat's fold (repeats > 1) keeps its metrics and predictions but no heat maps and no model: the run's
    gallery, localisation and Predict page are its first repeat's.
    """
    test = held_out(fold_of, fold)
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    first_repeat = fold < cfg.folds
    probs = outcome.test_probs
    y_test = data.labels[test_idx]
    m = summarize(y_test, probs, positive=data.positive)
    predictions = pd.DataFrame({
        "image_id": [data.image_ids[i] for i in test_idx],
        "fold": fold,
        "repeat": fold // cfg.folds,
        "label_index": y_test,
        "pred_index": probs.argmax(1),
        "prob_positive": probs[:, data.positive],
        "probs": [row.tolist() for row in probs],
    })
    arrays, rows = {}, []
    if cfg.gradcam and first_repeat:
        arrays, rows = explain_fold(
            outcome.model, cfg.backbone, pixels[test_idx], image_ids=[data.image_ids[i] for i in test_idx], labels=y_test,
            probs=probs, positive=data.positive, mask_paths=[data.mask_paths[i] for i in test_idx] if data.mask_paths else None,
            cap=cfg.gradcam_max, store_size=cfg.gradcam_size, device=device, method=cfg.gradcam_method, flip=cfg.gradcam_flip,
        )
    state = {k: v.detach().cpu() for k, v in outcome.model.state_dict().items()} if cfg.save_models and first_repeat else None
    row = {"fold": fold, "status": "finished", "n_train": len(train_idx), "n_test": len(test_idx),
           "iterations": outcome.iterations, "epochs": outcome.epochs, "train_seconds": outcome.train_seconds,
           "eval_seconds": outcome.eval_seconds, "accuracy": m["accuracy"], "sensitivity": m["sensitivity"],
           "specificity": m["specificity"], "auc": m["auc"], "confusion": json.dumps(m["confusion"])}
    return FoldResult(fold, row, m, predictions, arrays, rows, state, outcome.curve, outcome.train_seconds, node=socket.gethostname())


def write_fold(store: Store, run_id: str, result: FoldResult, *, started) -> None:
    """The one writer's part: the heat maps and the fold model as files, then the fold's row, predictions and heat-map index
    in one transaction."""
    fold = result.fold
    cam_rows = None
    if result.cam_rows:
        artifact = store.run_dir(run_id) / "cams" / f"fold_{fold}.npz"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(artifact, **result.cam_arrays)
        cam_rows = pd.DataFrame(result.cam_rows).assign(fold=fold, artifact=str(artifact.relative_to(store.runs_dir)))
    if result.model_state is not None:
        target = store.run_dir(run_id) / f"fold_{fold}.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.model_state, target)
    # a Ray worker stamps when its fold really began (its task may have waited in the queue since `started`)
    store.save_fold(run_id, {**result.row, "node": result.node, "started_at": result.row.get("started_at", started), "finished_at": now()},
                    result.predictions, cam_rows)


def _finish(cfg: RunConfig, data: PreparedData, run_id: str, store: Store, *, train_seconds: float, total_seconds: float, weights_used: str) -> RunResult:
    """Pooled out-of-fold metrics from the stored predictions (so they match what the pages read)."""
    preds = store.predictions(run_id)
    if len(preds) != len(data.labels) or preds["image_id"].duplicated().any():
        raise CxrError(f"run {run_id}: stored {len(preds)} out-of-fold predictions for {len(data.labels)} images")
    probs = np.array(preds["probs"].tolist())
    pooled = summarize(preds["label_index"].to_numpy(), probs, positive=data.positive)
    fold_aucs = store.folds(run_id)["auc"].to_numpy(dtype=float)
    auc_mean = float(np.nanmean(fold_aucs)) if np.isfinite(fold_aucs).any() else float("nan")
    localisation = summarize_localisation(store.cams(run_id)) if cfg.gradcam else {}
    pooled.update(localisation)
    store.update_run(
        run_id, status="finished", finished_at=now(), train_seconds=train_seconds, total_seconds=total_seconds,
        accuracy=pooled["accuracy"], sensitivity=pooled["sensitivity"], specificity=pooled["specificity"],
        auc=pooled["auc"], auc_mean_folds=auc_mean, metrics=json.dumps(pooled),
        **{k: localisation[k] for k in ("pointing_game", "pointing_chance", "energy_in_mask", "energy_chance") if k in localisation},
    )
    return RunResult(run_id, pooled, auc_mean, weights_used)


def _device_name(device: torch.device, cfg: RunConfig) -> str:
    """Where and how the run computes, as stored with it: `auto` settings resolve differently per machine
    (bf16 on one CPU, fp32 on another), and a reader of the results must be able to tell.

    >>> _device_name(torch.device("cpu"), RunConfig(precision="fp32"))  # doctest: +SKIP
    'cpu (2 threads; fp32, 1 fold at a time)'
    """
    ex = execution_for(cfg, device)
    k = pack_size(cfg.parallel_folds, device=device, batch_size=cfg.batch_size, image_size=cfg.image_size, folds=cfg.folds)
    how = f"{ex.describe()}, {'1 fold at a time' if k == 1 else f'{k} folds at once'}"
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)} ({how})"
    return f"cpu ({torch.get_num_threads()} threads; {how})"
