"""`python -m core bench --dashboard`: how long the dashboard's pages take on a heavy user's store.

Why: the pages were written against stores of a few runs; a lab that has trained for a year holds
thousands. This builds such a store in a temporary folder (through the real schema: `Store` runs the
migrations, then DuckDB bulk-inserts pandas frames), then drives every page in `pages/` with
Streamlit's `AppTest`, as tests/test_pages.py does, and times:

- the first render of a page in a fresh session once the process is warm (an untimed warm-up render
  of every page first, so imports are not counted; median of 3 sessions), with Streamlit's caches as
  the warm-up left them, and again with them cleared (what the first visitor after a server start waits);
- one interaction per page (Predict: several), in the session of the last cold render. A widget that
  lives in an `st.fragment` reruns only its fragment in a browser, while `AppTest.run()` reruns the whole
  script; such a widget is also timed with a fragment-only rerun (Streamlit's own mechanism, reached
  through AppTest's internals), and that is the figure judged. The full rerun is kept in the JSON.

`--app-root DIR` times another checkout's pages (a before/after comparison): the benchmark then reruns
itself in a subprocess with cwd=DIR and PYTHONPATH=DIR, loading this file by its path, so DIR's `core`
(and `pages`) are the ones imported, and builds the store with DIR's `core.results.store.Store`. The benchmark
relies only on the page files, the widget keys they declare and the store's schema (version 4).

The store (defaults: `--runs 2500 --predictions 1000000`): that many finished runs with 10 folds each
(the 2-3 with fold models: 5), plus 2 running (owned by this process, so they read as alive), 2 failed
(one by a diverged fold), 2 interrupted and 1 cancelled run (fold rows and curves, no predictions); about
10 % of the finished runs in sweeps of 3 (same splits, learning rate varied). Every finished run predicts
every image of one shared data set once (predictions / runs images: 400 by default, out of fold), with
fold rows and metrics, a training curve of 25 train rows plus 5 held-out rows per fold, a `splits` row per
image, and a Grad-CAM index of up to 100 images x 2 targets pointing at 10 small shared .npz artifacts
(`image_ids`, `predicted`, `positive`, uint8, as core/training/engine.py writes them). The data set is the
synthetic demo phantom (`core.data.phantom`, 128 px PNGs with masks). All runs are marked synthetic and
tagged `benchmark`; none was trained. The runs with fold models get ResNet-18 state dicts
(`build_model("resnet18", 2, "none")`, random weights) so that `core.training.predict` can use them.

JSON keys (schema 1): `schema`, `kind` ("dashboard"), `started_at`, `total_seconds`, `app_root`,
`app_commit` (short hash, "-dirty" with uncommitted changes), `tree_changed_during_run` (a page or core
file's mtime changed while timing), `machine` (cpu_count, python, platform, streamlit), `load_before`,
`load_after` (1, 5, 15 min load averages), `store` (runs, finished_runs, model_runs, sweeps, predictions,
iterations, cams, folds, splits, images, file_mb, build_seconds, predictions_per_run), `harness_s`
(AppTest's own cost: a fresh session of an empty page), `targets` (first_render_s, interaction_s,
second_prediction_s), `pages` (one per page: page, first_render_s, first_render_runs, cold_render_s,
cold_render_runs, sessions, error, notes, interactions: [label, seconds, full_rerun_s, fragment, target,
target_s, met, error]), `findings` (errors and exceptions the pages showed), `table` (the printed rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
PAGES = ("home.py", "0_Data.py", "1_Train.py", "2_Runs.py", "3_Compare.py", "4_Grad-CAM.py", "5_Predict.py", "6_Export.py")
TARGETS = {"first_render_s": 1.0, "interaction_s": 0.3, "second_prediction_s": 0.3}
JSON_KEYS = ("schema", "kind", "started_at", "total_seconds", "app_root", "app_commit", "tree_changed_during_run", "machine",
             "load_before", "load_after", "store", "harness_s", "targets", "pages", "findings", "table")
STORE_KEYS = ("runs", "finished_runs", "model_runs", "sweeps", "predictions", "iterations", "cams", "folds", "splits", "images",
              "file_mb", "build_seconds", "predictions_per_run")
CLASSES = ["Normal", "Pleural Effusion"]  # what the engine stores for the demo data set (sorted labels)
POSITIVE = 1
TRAIN_ROWS, EVAL_EVERY = 25, 5  # curve rows per fold: 25 train iterations, held-out every 5
CAMS_PER_RUN = 100
SLOW_PAGE_S = 20.0  # a page whose warm-up render takes longer is timed in one session, not three
PAGE_TIMEOUT_S = 900


# -- the store -----------------------------------------------------------------------------------


@dataclass
class BenchStore:
    """What was built, so the interactions can name runs and images that exist."""

    root: Path
    runs_dir: Path
    demo_dir: Path
    finished: list[str]  # newest first, as the pages list them
    model_runs: list[str]
    sweeps: list[str]
    sizes: dict


def build_store(root: Path, *, runs: int, predictions: int, model_runs: int = 2, seed: int = 0) -> BenchStore:
    """A heavy user's runs folder under `root`: `runs` finished runs holding `predictions` out-of-fold predictions in all."""
    from core.config import RunConfig
    from core.data.phantom import make_demo_dataset
    from core.results.store import Store

    if runs < 1 or predictions < 2 * runs:
        raise ValueError("the store needs at least one finished run and two predictions per run")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    runs_dir, demo_dir = root / "runs", root / "data" / "demo"
    per_run = np.full(runs, predictions // runs)
    per_run[: predictions % runs] += 1
    n_images = int(per_run.max())
    manifest = pd.read_csv(make_demo_dataset(demo_dir, n_per_class=math.ceil(n_images / 2), size=128, seed=seed), dtype=str,
                           keep_default_na=False).sort_values("image_id").head(n_images).reset_index(drop=True)
    images = _images_table(manifest, demo_dir)
    dataset_id = "bench-" + hashlib.sha256("".join(images["image_id"]).encode()).hexdigest()[:16]
    labels = (images["label"] == CLASSES[POSITIVE]).to_numpy().astype(np.int64)

    plan = _plan_runs(runs, model_runs, rng)
    run_of = np.repeat(np.arange(runs), per_run)
    img_of = np.arange(len(run_of)) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    fold_of = _folds(plan, per_run, n_images, rng)
    y = labels[img_of]
    strength = rng.uniform(0.9, 2.6, runs)[run_of]
    p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, len(y)) + rng.normal(0, 0.3, runs)[run_of])))
    ids = plan["run_id"].to_numpy()
    preds = pd.DataFrame({"run_id": ids[run_of], "image_id": images["image_id"].to_numpy()[img_of], "fold": fold_of,
                          "label_index": y, "pred_index": (p >= 0.5).astype(np.int64), "prob_positive": p})
    folds = _fold_rows(preds, plan, rng)
    run_metrics = _run_metrics(preds, folds)
    curves = _curves(plan, rng)
    cams, artifacts = _cams(preds, plan, images)
    unfinished = _unfinished(plan, len(images), rng)

    now = datetime.now().replace(microsecond=0)
    runs_table = _runs_table(plan, run_metrics, cams, dataset_id=dataset_id, n_images=per_run,
                             config=lambda row: _config(RunConfig, row, demo_dir))
    runs_table = pd.concat([runs_table, _unfinished_runs_table(unfinished["runs"], dataset_id, len(images), demo_dir, RunConfig)],
                           ignore_index=True)
    store = Store(runs_dir)
    with store.transaction() as con:  # migrations run on the first transaction: the schema is the code's own
        con.execute("SET enable_progress_bar = false")
        con.execute("INSERT INTO datasets (dataset_id, source, root, synthetic, n_images, n_excluded, classes, created_at) "
                    "VALUES (?, 'demo', ?, true, ?, 0, ?, ?)", [dataset_id, str(demo_dir), len(images), json.dumps(CLASSES), now])
        _insert(con, "images", images.assign(dataset_id=dataset_id))
        _insert(con, "runs", runs_table)
        _insert(con, "folds", pd.concat([folds, unfinished["folds"]], ignore_index=True))
        _insert(con, "iterations", pd.concat([curves, unfinished["curves"]], ignore_index=True))
        con.register("bench_preds", preds)
        con.execute("INSERT INTO predictions (run_id, image_id, fold, label_index, pred_index, prob_positive, probs) SELECT run_id, "
                    "image_id, fold, label_index, pred_index, prob_positive, [1 - prob_positive, prob_positive]::DOUBLE[] FROM bench_preds")
        con.execute("INSERT INTO splits (run_id, image_id, fold) SELECT run_id, image_id, fold FROM bench_preds")
        con.unregister("bench_preds")
        _insert(con, "cams", cams)
    _write_artifacts(runs_dir, artifacts)
    model_ids = plan.loc[plan["model"], "run_id"].tolist()
    _write_fold_models(runs_dir, model_ids, k=int(plan.loc[plan["model"], "folds"].max()) if model_ids else 0)

    counts = store.query("SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM runs WHERE status = 'finished') AS finished, "
                         "(SELECT count(*) FROM predictions) AS predictions, (SELECT count(*) FROM iterations) AS iterations, "
                         "(SELECT count(*) FROM cams) AS cams, (SELECT count(*) FROM folds) AS folds, (SELECT count(*) FROM splits) AS splits, "
                         "(SELECT count(*) FROM images) AS images").iloc[0]
    sizes = {"runs": int(counts["runs"]), "finished_runs": int(counts["finished"]), "model_runs": len(model_ids),
             "sweeps": int(plan["sweep_id"].nunique()), "predictions": int(counts["predictions"]), "iterations": int(counts["iterations"]),
             "cams": int(counts["cams"]), "folds": int(counts["folds"]), "splits": int(counts["splits"]), "images": int(counts["images"]),
             "file_mb": round(store.path.stat().st_size / 1e6, 1), "build_seconds": round(time.perf_counter() - started, 1),
             "predictions_per_run": n_images}
    newest = plan.sort_values("created_at", ascending=False)
    return BenchStore(root, runs_dir, demo_dir, newest["run_id"].tolist(), model_ids,
                      sorted(plan["sweep_id"].dropna().unique().tolist()), sizes)


def _images_table(manifest: pd.DataFrame, demo_dir: Path) -> pd.DataFrame:
    """The `images` rows the engine writes for a demo folder: absolute paths, the patient as group, content hashes."""
    def absolute(rel: str) -> str:
        return str((demo_dir / rel).resolve()) if rel else ""

    paths = [absolute(p) for p in manifest["path"]]
    return pd.DataFrame({
        "image_id": manifest["image_id"], "path": paths, "label": manifest["label"], "group_id": manifest["patient_id"],
        "view": manifest["view"], "mask_path": [absolute(m) for m in manifest["mask_path"]], "excluded_reason": "",
        "content_hash": [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths],
    })


def _plan_runs(runs: int, model_runs: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per finished run: id, creation time (a year of work, oldest first), preset, settings, sweep, fold models."""
    start = datetime.now().replace(microsecond=0) - timedelta(days=365)
    offsets = np.sort(rng.uniform(0, 364 * 86400, runs))
    sweep = np.full(runs, None, dtype=object)
    members = np.zeros(runs, dtype=np.int64)
    i, n_sweeps = 0, 0
    while i + 3 <= runs and runs >= 6:  # about one run in ten belongs to a sweep of three, started within minutes
        if rng.random() < 0.035:
            sweep[i : i + 3] = f"sweep-bench-{n_sweeps:04d}"
            offsets[i + 1], offsets[i + 2] = offsets[i] + 600, offsets[i] + 1200
            members[i : i + 3] = [0, 1, 2]
            n_sweeps, i = n_sweeps + 1, i + 3
        else:
            i += 1
    if n_sweeps == 0 and runs >= 6:  # a small store still gets one sweep, for the Compare page's sweep mode
        sweep[0:3], members[0:3] = "sweep-bench-0000", [0, 1, 2]
        offsets[1], offsets[2] = offsets[0] + 600, offsets[0] + 1200
    offsets = np.maximum.accumulate(offsets)
    created = [start + timedelta(seconds=float(s)) for s in offsets]
    model = np.zeros(runs, dtype=bool)
    candidates = [k for k in range(runs - 1, -1, -1) if sweep[k] is None][1 : 1 + model_runs]  # recent runs, not the newest
    model[candidates] = True
    preset = np.where(rng.random(runs) < 0.7, "quick", "paper")
    backbone = np.where(preset == "quick", "resnet18", rng.choice(["resnet50", "densenet121", "efficientnet_b0"], runs))
    image_size = np.where(preset == "quick", 64, 224)
    lr = np.where(preset == "quick", 1e-3, 1e-4)
    lr = np.where(sweep != None, np.array([1e-3, 3e-4, 1e-4])[members], lr)  # noqa: E711 - elementwise
    seed = rng.integers(0, 5, runs)
    for k in np.flatnonzero(members > 0):  # a sweep varies the learning rate only
        backbone[k], image_size[k], preset[k], seed[k] = backbone[k - 1], image_size[k - 1], preset[k - 1], seed[k - 1]
    backbone[model], image_size[model], preset[model] = "resnet18", 64, "quick"
    ids = [f"{c:%Y%m%d-%H%M%S}-{k:06x}" for k, c in enumerate(created)]
    return pd.DataFrame({"run_id": ids, "created_at": created, "preset": preset, "backbone": backbone, "image_size": image_size,
                         "learning_rate": lr, "sweep_id": sweep, "model": model, "folds": np.where(model, 5, 10),
                         "seed": seed})


def _folds(plan: pd.DataFrame, per_run: np.ndarray, n_images: int, rng: np.random.Generator) -> np.ndarray:
    """Each run's fold of each image; the runs of a sweep share their first run's splits, as core/training/sweep.py does."""
    out, shared = [], {}
    for row, n in zip(plan.itertuples(), per_run):
        key = row.sweep_id or row.run_id
        if key not in shared:
            shared[key] = rng.permutation(n_images) % row.folds
        out.append(shared[key][:n])
    return np.concatenate(out)


def _auc(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """Mann-Whitney AUC per group (ties count half), vectorised over all groups at once."""
    ranks = frame.groupby(by)["prob_positive"].rank()
    g = frame.assign(r=ranks.where(frame["label_index"] == POSITIVE, 0.0), pos=(frame["label_index"] == POSITIVE).astype(int)).groupby(by)
    n1, n = g["pos"].sum(), g.size()
    n0 = n - n1
    return ((g["r"].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)).where((n1 > 0) & (n0 > 0))


def _rates(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    y, call = frame["label_index"] == POSITIVE, frame["pred_index"] == POSITIVE
    parts = frame[by].assign(tp=y & call, fn=y & ~call, fp=~y & call, tn=~y & ~call)
    c = parts.groupby(by)[["tp", "fn", "fp", "tn"]].sum()
    return c.assign(accuracy=(c.tp + c.tn) / c.sum(axis=1), sensitivity=c.tp / (c.tp + c.fn), specificity=c.tn / (c.tn + c.fp),
                    auc=_auc(frame, by))


def _fold_rows(preds: pd.DataFrame, plan: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    r = _rates(preds, ["run_id", "fold"]).reset_index()
    n = preds.groupby("run_id").size()
    n_test = preds.groupby(["run_id", "fold"]).size().to_numpy()
    n_train = n.loc[r["run_id"]].to_numpy() - n_test
    created = plan.set_index("run_id")["created_at"].loc[r["run_id"]].to_numpy()
    train_s = rng.uniform(8, 40, len(r))
    start = pd.to_datetime(created) + pd.to_timedelta(r["fold"] * 45, unit="s")
    return pd.DataFrame({
        "run_id": r["run_id"], "fold": r["fold"], "status": "finished", "n_train": n_train, "n_test": n_test, "iterations": TRAIN_ROWS,
        "epochs": TRAIN_ROWS * 32 / np.maximum(n_train, 1), "train_seconds": train_s, "eval_seconds": rng.uniform(0.5, 3, len(r)),
        "accuracy": r["accuracy"], "sensitivity": r["sensitivity"], "specificity": r["specificity"], "auc": r["auc"],
        "confusion": [json.dumps([[int(tn), int(fp)], [int(fn), int(tp)]]) for tp, fn, fp, tn in zip(r.tp, r.fn, r.fp, r.tn)],
        "started_at": start, "finished_at": start + pd.to_timedelta(train_s, unit="s"),
    })


def _run_metrics(preds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    r = _rates(preds, ["run_id"])
    return r.assign(auc_mean_folds=folds.groupby("run_id")["auc"].mean(), train_seconds=folds.groupby("run_id")["train_seconds"].sum(),
                    total_seconds=folds.groupby("run_id").apply(lambda f: (f["train_seconds"] + f["eval_seconds"]).sum() + 5.0,
                                                                include_groups=False))


def _curve_frame(run_ids: np.ndarray, n_folds: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Train rows 1..rows[i] for every fold of every run, held-out rows every EVAL_EVERY (and the last): a decaying, noisy loss."""
    frames = []
    for phase, step in (("train", 1), ("heldout", EVAL_EVERY)):
        per_fold = [np.unique(np.r_[np.arange(step, r + 1, step), r]) if r else np.array([], int) for r in rows]
        counts = np.array([len(p) for p in per_fold]) * n_folds
        run = np.repeat(np.arange(len(run_ids)), counts)
        fold = np.concatenate([np.repeat(np.arange(k), len(p)) for k, p in zip(n_folds, per_fold)]) if counts.sum() else np.array([], int)
        it = np.concatenate([np.tile(p, k) for k, p in zip(n_folds, per_fold)]) if counts.sum() else np.array([], int)
        tau = rng.uniform(6, 20, len(run_ids))[run]
        noise = 0.08 if phase == "train" else 0.04
        loss = 0.25 + 0.45 * np.exp(-it / tau) + rng.normal(0, noise, len(it)).clip(-0.2, 0.2)
        frames.append(pd.DataFrame({"run_id": run_ids[run], "fold": fold, "phase": phase, "iteration": it, "epoch": it * 32 // 360,
                                    "loss": loss, "accuracy": (1 - loss * 0.6).clip(0.4, 1.0), "lr": 1e-3, "elapsed_s": it * 1.1}))
    return pd.concat(frames, ignore_index=True)


def _curves(plan: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(plan)
    return _curve_frame(plan["run_id"].to_numpy(), plan["folds"].to_numpy(), np.full(n, TRAIN_ROWS), rng)


def _cams(preds: pd.DataFrame, plan: pd.DataFrame, images: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, int]]:
    """Up to CAMS_PER_RUN images per run (the first of each fold) x 2 targets; artifacts shared: fold k -> bench-cams/fold_k.npz."""
    cap = np.ceil(CAMS_PER_RUN / plan.set_index("run_id")["folds"]).astype(int)
    ordered = preds.sort_values(["run_id", "fold", "image_id"])
    ordered = ordered.assign(slot=ordered.groupby(["run_id", "fold"]).cumcount().to_numpy())
    chosen = ordered[ordered["slot"].to_numpy() < cap.loc[ordered["run_id"]].to_numpy()]
    y, call = chosen["label_index"] == POSITIVE, chosen["pred_index"] == POSITIVE
    outcome = np.select([y & call, y & ~call, ~y & call], ["TP", "FN", "FP"], "TN")
    has_mask = chosen["image_id"].map(images.set_index("image_id")["mask_path"] != "").to_numpy()
    hits = pd.array(chosen["slot"].to_numpy() % 3 != 0, dtype="boolean")  # the pointing game hit 2 maps in 3
    hits[~has_mask] = pd.NA
    rows = []
    for target in ("predicted", "positive"):
        rows.append(pd.DataFrame({
            "run_id": chosen["run_id"].to_numpy(), "image_id": chosen["image_id"].to_numpy(), "fold": chosen["fold"].to_numpy(),
            "target": target, "target_class": chosen["pred_index"].to_numpy() if target == "predicted" else POSITIVE,
            "artifact": [f"bench-cams/fold_{k}.npz" for k in chosen["fold"]], "slot": chosen["slot"].to_numpy(), "outcome": outcome,
            "prob_positive": chosen["prob_positive"].to_numpy(), "has_mask": has_mask,
            "pointing_hit": hits,
            "pointing_chance": np.where(has_mask, 0.14, np.nan), "energy_in_mask": np.where(has_mask, 0.31, np.nan),
            "mask_fraction": np.where(has_mask, 0.14, np.nan), "peak_y": np.where(has_mask, 1, -1), "peak_x": np.where(has_mask, 0, -1),
        }))
    cams = pd.concat(rows, ignore_index=True)
    cams[["peak_y", "peak_x"]] = cams[["peak_y", "peak_x"]].astype("Int64").where(cams["has_mask"])
    slots = chosen.groupby("fold")["slot"].max() + 1
    return cams, {int(k): int(v) for k, v in slots.items()}


def _write_artifacts(runs_dir: Path, artifacts: dict[int, int], size: int = 64) -> None:
    """The heat-map files the cams rows point at: smooth blobs, as Grad-CAM of a last block upsampled looks."""
    folder = runs_dir / "bench-cams"
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for fold, n in artifacts.items():
        rng = np.random.default_rng(fold)
        cy, cx = rng.uniform(0.3, 0.8, (2, n, 1, 1))
        blob = np.exp(-(((yy - cy) ** 2) + ((xx - cx) ** 2)) / 0.03)
        maps = (255 * blob / blob.max(axis=(1, 2), keepdims=True)).astype(np.uint8)
        np.savez_compressed(folder / f"fold_{fold}.npz", image_ids=np.array([f"slot-{k}" for k in range(n)]), predicted=maps,
                            positive=maps[::-1].copy())


def _write_fold_models(runs_dir: Path, run_ids: list[str], *, k: int) -> None:
    """Untrained ResNet-18 fold models (random weights, one seed per fold): enough for the Predict page to load and run them."""
    if not run_ids:
        return
    import torch

    from core.training.models import build_model

    for fold in range(k):
        torch.manual_seed(fold)
        model, _ = build_model("resnet18", len(CLASSES), "none")
        for run_id in run_ids:
            (runs_dir / run_id).mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), runs_dir / run_id / f"fold_{fold}.pt")


def _config(run_config, row, demo_dir: Path) -> str:
    cfg = run_config(data=str(demo_dir), source="demo", backbone=row.backbone, image_size=int(row.image_size), folds=int(row.folds),
                     max_iterations=TRAIN_ROWS, eval_every=EVAL_EVERY, learning_rate=float(row.learning_rate), seed=int(row.seed),
                     weights="none", save_models=bool(row.model), positive_class=CLASSES[POSITIVE],
                     **({"optimizer": "adam", "head_lr_factor": 1.0, "batch_size": 32, "augment": False} if row.preset == "quick" else {}))
    return cfg.to_json()


def _common_run_fields() -> dict:
    return {"synthetic": True, "code_version": "bench-synthetic", "device": "cpu (2 threads; fp32, 1 fold at a time)",
            "torch_version": "synthetic", "torchvision_version": "synthetic", "weights_used": "none (benchmark: not trained)",
            "weights_message": "", "classes": json.dumps(CLASSES), "positive_class": CLASSES[POSITIVE], "grouped": True,
            "tags": "benchmark, synthetic", "notes": "synthetic benchmark run (python -m core bench --dashboard); never trained",
            "leak_status": "clean", "leakage": "no patient is in two folds", "resumes": 0}


def _runs_table(plan: pd.DataFrame, metrics: pd.DataFrame, cams: pd.DataFrame, *, dataset_id: str, n_images: np.ndarray,
                config: Callable) -> pd.DataFrame:
    m = metrics.loc[plan["run_id"]].reset_index(drop=True)
    loc = cams[(cams["target"] == "positive") & cams["has_mask"]].groupby("run_id").agg(
        pointing_game=("pointing_hit", lambda s: float(s.astype(float).mean())), pointing_chance=("pointing_chance", "mean"),
        energy_in_mask=("energy_in_mask", "mean"), energy_chance=("mask_fraction", "mean")).reindex(plan["run_id"]).reset_index(drop=True)
    metric_json = [json.dumps({"accuracy": a, "sensitivity": s, "specificity": sp, "auc": u, "tp": int(tp), "fn": int(fn), "fp": int(fp),
                               "tn": int(tn), "confusion": [[int(tn), int(fp)], [int(fn), int(tp)]]})
                   for a, s, sp, u, tp, fn, fp, tn in zip(m.accuracy, m.sensitivity, m.specificity, m.auc, m.tp, m.fn, m.fp, m.tn)]
    created = pd.to_datetime(plan["created_at"])
    table = pd.DataFrame({
        "run_id": plan["run_id"], "name": [f"{p} {b} lr={lr:g} #{k}" for k, (p, b, lr) in
                                           enumerate(zip(plan["preset"], plan["backbone"], plan["learning_rate"]))],
        "sweep_id": plan["sweep_id"], "preset": plan["preset"], "status": "finished", "created_at": created, "started_at": created,
        "finished_at": created + pd.to_timedelta(m["total_seconds"], unit="s"), "config": [config(r) for r in plan.itertuples()],
        "dataset_id": dataset_id, "n_images": n_images, "folds": plan["folds"], "train_seconds": m["train_seconds"],
        "total_seconds": m["total_seconds"], "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
        "auc": m["auc"], "auc_mean_folds": m["auc_mean_folds"], "metrics": metric_json, **{c: loc[c] for c in loc.columns},
        **_common_run_fields(),
    })
    return table


def _unfinished(plan: pd.DataFrame, n_images: int, rng: np.random.Generator) -> dict:
    """A handful of runs that did not finish: 2 running (owned by this process, so alive), 2 failed (one diverged), 2 interrupted,
    1 cancelled, all newer than every finished run; fold rows for the folds they finished and curves, no predictions."""
    last = pd.to_datetime(plan["created_at"]).max()
    kinds = [("running", 3), ("running", 1), ("failed", 4), ("failed", 2), ("interrupted", 6), ("interrupted", 0), ("cancelled", 2)]
    runs, folds, curve_ids, curve_rows = [], [], [], []
    for k, (status, done) in enumerate(kinds):
        run_id = f"{last + timedelta(hours=k + 1):%Y%m%d-%H%M%S}-u{k:05x}"
        diverged = status == "failed" and k == 2
        error = {"failed": (f"fold {done + 1} diverged at iteration 17 (loss nan); lower the learning rate (learning_rate=0.1)"
                            if diverged else "the disk holding runs is full (no space left on device)"),
                 "interrupted": "the run's process ended without finishing (killed or power loss); finished folds are kept",
                 "cancelled": "cancelled by the user"}.get(status)
        runs.append({"run_id": run_id, "status": status, "error": error, "created_at": last + timedelta(hours=k + 1), "done": done,
                     "alive": status == "running"})
        n_test = n_images // 10
        for f in range(done + (1 if diverged else 0)):
            bad = diverged and f == done
            folds.append({"run_id": run_id, "fold": f, "status": "diverged" if bad else "finished", "n_train": n_images - n_test,
                          "n_test": n_test, "iterations": 17 if bad else TRAIN_ROWS, "train_seconds": float(rng.uniform(8, 40)),
                          "eval_seconds": 1.0, **({} if bad else {"accuracy": 0.8, "sensitivity": 0.8, "specificity": 0.8, "auc": 0.88,
                                                                   "confusion": "[[16, 4], [4, 16]]"})})
        curve_ids.append(run_id)
        curve_rows.append(TRAIN_ROWS if done else 12)
    curves = _curve_frame(np.array(curve_ids), np.array([max(1, r["done"]) for r in runs]), np.array(curve_rows), rng)
    return {"runs": runs, "folds": pd.DataFrame(folds), "curves": curves}


def _unfinished_runs_table(runs: list[dict], dataset_id: str, n_images: int, demo_dir: Path, run_config) -> pd.DataFrame:
    rows = []
    for r in runs:
        cfg = run_config(data=str(demo_dir), source="demo", backbone="resnet18", image_size=64, folds=10, max_iterations=TRAIN_ROWS,
                         eval_every=EVAL_EVERY, weights="none", optimizer="adam", head_lr_factor=1.0, batch_size=32, augment=False,
                         learning_rate=0.1 if r["status"] == "failed" else 1e-3)
        owner = {"pid": os.getpid(), "host": socket.gethostname()} if r["alive"] else {"pid": 2**22 + 17, "host": socket.gethostname()}
        rows.append({"run_id": r["run_id"], "name": f"{r['status']} run {r['run_id'][-5:]}", "preset": "quick", "status": r["status"],
                     "created_at": r["created_at"], "started_at": r["created_at"], "config": cfg.to_json(), "dataset_id": dataset_id,
                     "n_images": n_images, "folds": 10, "error": r["error"], **owner, **_common_run_fields()})
    return pd.DataFrame(rows)


def _insert(con, table: str, frame: pd.DataFrame) -> None:
    """Bulk insert by column name, so a frame need not list the table's columns in order (or all of them)."""
    con.register("bench_frame", frame)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM bench_frame")
    con.unregister("bench_frame")


# -- the pages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One interaction: set a widget (or click a button), then rerun.

    `value`: the new value, or a function of (the built store, the AppTest element) giving it; `target`
    names the issue's target it is judged by (None: timed, not judged).
    """

    label: str
    kind: str  # the AppTest element: slider, selectbox, multiselect, radio, number_input, button
    key: str
    value: object = None
    target: str | None = "interaction_s"

    def apply(self, at, store: BenchStore) -> None:
        element = getattr(at, self.kind)(key=self.key)
        if self.kind == "button":
            element.click()
        else:
            element.set_value(self.value(store, element) if callable(self.value) else self.value)


STEPS: dict[str, list[Step]] = {
    "home.py": [],  # its only widgets write: create demo data, start a training run
    "0_Data.py": [Step("folds 10 -> 5", "number_input", "data_folds", 5)],
    "1_Train.py": [Step("preset quick -> paper", "selectbox", "train_preset", "paper")],
    "2_Runs.py": [Step("threshold slider 0.50 -> 0.70", "slider", "runs_threshold", 0.7)],
    "3_Compare.py": [
        Step("mode: a sweep -> chosen runs", "radio", "compare_mode", "chosen runs"),
        Step("choose 2 runs", "multiselect", "compare_runs", lambda s, _: s.finished[:2]),
        Step("change the runs (3 others)", "multiselect", "compare_runs", lambda s, _: s.finished[2:5]),
    ],
    "4_Grad-CAM.py": [Step("outcome filter -> FP, FN", "multiselect", "cam_outcomes", ["FP", "FN"])],
    "5_Predict.py": [
        Step("choose a predictable run", "selectbox", "predict_run", lambda s, _: s.model_runs[0]),
        Step("data-set image: 1st prediction (loads the fold models)", "radio", "predict_source", "from the data set", None),
        Step("another image: 2nd prediction", "selectbox", "predict_image", lambda s, box: box.options[1], "second_prediction_s"),
        Step("heat-map opacity 0.45 -> 0.70", "slider", "predict_opacity", 0.7),
    ],
    "6_Export.py": [
        Step("choose 2 runs", "multiselect", "export_runs", lambda s, _: s.finished[:2]),
        Step("build the report (2 runs)", "button", "export_build", target=None),
    ],
}


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_streamlit() -> Iterator[None]:
    """Streamlit warns on every AppTest run outside a server ("missing ScriptRunContext"): not findings, so not printed.

    Its loggers are re-levelled from its config on every run, so warnings are disabled process-wide while the pages run.
    """
    import logging

    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _timed(run: Callable[[], object]) -> float:
    t = time.perf_counter()
    run()
    return time.perf_counter() - t


def _shown_problems(at) -> list[str]:
    """What a user would read as a failure: st.exception elements and st.error messages."""
    out = [f"exception: {e.message}" for e in at.exception]
    out += [f"error shown: {e.value}" for e in at.error]
    return out


def _fragment_of(at, key: str) -> str | None:
    """The id of the st.fragment the widget `key` was drawn in, or None (AppTest internals; None when they change)."""
    try:
        widget_id = at.session_state._state._state._key_id_mapper.get_id_from_key(key)
        return at.session_state._state._state._new_widget_state.widget_metadata[widget_id].fragment_id
    except Exception:  # noqa: BLE001 - internals of one Streamlit version: no fragment timing then
        return None


def _fragment_rerun(at, fragment_id: str) -> float:
    """Rerun only one fragment with the current widget states, as a browser does after a widget inside it changed.

    AppTest has no such call (its run() reruns the script), so the rerun request it builds is given the
    fragment's id; the tree it leaves holds only that fragment, so the caller reruns fully afterwards.
    """
    from functools import partial
    from unittest import mock

    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.testing.v1 import local_script_runner

    with mock.patch.object(local_script_runner, "RerunData", partial(RerunData, fragment_id_queue=[fragment_id])):
        return _timed(at.run)


def _clear_streamlit_caches() -> None:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@dataclass
class Harness:
    """Fresh AppTest sessions without AppTest's own start-up cost.

    A new AppTest scans every installed package for Streamlit components on its first run (0.2-0.45 s
    here), which a server does once at start, not per session; sessions here share the first one's
    registry (an AppTest attribute: when it is missing, each session scans again and `harness_s` shows it).
    """

    timeout: float = PAGE_TIMEOUT_S
    components: object = None

    def session(self, page: Path):
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(page), default_timeout=self.timeout)
        if self.components is not None:
            at._bidi_component_manager = self.components
        return at

    def run(self, at) -> float:
        seconds = _timed(at.run)
        if self.components is None:
            self.components = getattr(at, "_bidi_component_manager", None)
        return seconds


def time_page(page: Path, store: BenchStore, harness: Harness, *, sessions: int) -> dict:
    """First render (warm caches, then cold), then the page's interactions in the last session; errors are reported, not raised."""
    out = {"page": page.name, "first_render_s": None, "first_render_runs": [], "cold_render_s": None, "cold_render_runs": [],
           "sessions": sessions, "error": None, "notes": [], "interactions": []}
    try:
        for cold in (False, True):
            for _ in range(sessions):
                if cold:
                    _clear_streamlit_caches()
                at = harness.session(page)
                out["cold_render_runs" if cold else "first_render_runs"].append(round(harness.run(at), 3))
            out["notes"] += [n for n in _shown_problems(at) if n not in out["notes"]]
    except Exception as exc:  # noqa: BLE001 - a page that cannot render is a finding, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    out["first_render_s"] = round(statistics.median(out["first_render_runs"]), 3)
    out["cold_render_s"] = round(statistics.median(out["cold_render_runs"]), 3)
    for step in STEPS.get(page.name, []):
        row = interact(at, step, store)
        out["interactions"].append(row)
        if row["seconds"] is None:  # the widget is gone or the rerun failed: the next steps would not mean anything
            break
    return out


def interact(at, step: Step, store: BenchStore) -> dict:
    """Apply one step and time the rerun a browser would wait for (the fragment's alone when the widget is in one)."""
    row = {"label": step.label, "seconds": None, "full_rerun_s": None, "fragment": False, "target": step.target,
           "target_s": TARGETS.get(step.target), "met": None, "error": None}
    try:
        step.apply(at, store)
    except Exception as exc:  # noqa: BLE001 - the widget is not on the page (renamed, or the page stopped early)
        row["error"] = f"widget {step.key!r} not found or not settable: {type(exc).__name__}: {exc}"
        return row
    try:
        fragment = _fragment_of(at, step.key)
        if fragment:
            row["fragment"], row["seconds"] = True, round(_fragment_rerun(at, fragment), 3)
            problems = _shown_problems(at)
        row["full_rerun_s"] = round(_timed(at.run), 3)  # after a fragment rerun, also restores the whole tree for the next step
        if not fragment:
            row["seconds"], problems = row["full_rerun_s"], _shown_problems(at)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row["error"] = "; ".join(problems) or None
    if row["target_s"] is not None:
        row["met"] = row["seconds"] <= row["target_s"]
    return row


def harness_seconds(root: Path, harness: Harness) -> float:
    """What a fresh session of a page that draws one line costs here: the floor under every first render."""
    script = root / "empty_page.py"
    script.write_text("import streamlit as st\nst.write('empty')\n")
    harness.run(harness.session(script))
    return round(statistics.median(harness.run(harness.session(script)) for _ in range(5)), 3)


def time_pages(app_root: Path, store: BenchStore, harness: Harness, *, pages: tuple[str, ...] = PAGES, sessions: int = 3,
               log=print) -> list[dict]:
    """Warm every page once (untimed: imports, first store reads), then time each; slow pages get one session."""
    warm = {}
    with _env(CXR_RUNS_DIR=str(store.runs_dir), CXR_DEMO_DIR=str(store.demo_dir)):
        for name in pages:
            log(f"warm-up render: {name}")
            try:
                warm[name] = harness.run(harness.session(app_root / "pages" / name))
            except Exception as exc:  # noqa: BLE001 - time_page reports it
                warm[name] = 0.0
                log(f"  {type(exc).__name__}: {exc}")
        results = []
        for name in pages:
            n = 1 if warm[name] > SLOW_PAGE_S else sessions
            log(f"timing: {name} ({n} session{'s' if n > 1 else ''} each, warm-up took {warm[name]:.1f} s)")
            result = time_page(app_root / "pages" / name, store, harness, sessions=n)
            result["warmup_s"] = round(warm[name], 3)
            if n < sessions:
                result["notes"].append(f"warm-up took {warm[name]:.0f} s: timed in 1 session, not {sessions}")
            results.append(result)
    return results


# -- the whole benchmark -------------------------------------------------------------------------


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _commit(root: Path) -> str:
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"


def _tree_stamp(root: Path) -> str:
    """mtimes of the page and core files: another editor changing them during the run makes the figures mixed."""
    files = sorted([*(root / "pages").glob("*.py"), *(root / "core").rglob("*.py")])
    return hashlib.sha1("".join(f"{f}:{f.stat().st_mtime_ns}" for f in files if f.is_file()).encode()).hexdigest()


def run_dashboard_bench(*, runs: int = 2500, predictions: int = 1_000_000, app_root: Path | None = None, out: Path | None = None,
                        pages: tuple[str, ...] = PAGES, sessions: int = 3, model_runs: int = 2, in_process: bool = False,
                        log=None) -> dict:
    """Build the store, time the pages, return (and write to `out`) the JSON described in the module docstring."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    app_root = Path(app_root or REPO).resolve()
    if not in_process and app_root != REPO:
        result = _in_subprocess(runs=runs, predictions=predictions, app_root=app_root, pages=pages, sessions=sessions, model_runs=model_runs)
    else:
        result = _run_here(runs=runs, predictions=predictions, app_root=app_root, pages=pages, sessions=sessions, model_runs=model_runs,
                           log=log)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, default=str))
    return result


def _run_here(*, runs: int, predictions: int, app_root: Path, pages: tuple[str, ...], sessions: int, model_runs: int, log) -> dict:
    import core
    import streamlit

    if not Path(core.__file__).absolute().is_relative_to(app_root):
        raise RuntimeError(f"core is imported from {Path(core.__file__).parent}, not from {app_root}: put {app_root} first on sys.path")
    started, t0 = datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    load_before, stamp = _load(), _tree_stamp(app_root)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dashboard-") as tmp:
        log(f"building the store: {runs} finished runs, {predictions} predictions ...")
        store = build_store(Path(tmp), runs=runs, predictions=predictions, model_runs=model_runs)
        log(f"store built in {store.sizes['build_seconds']} s: {store.sizes}")
        harness = Harness()
        with _quiet_streamlit():
            harness_s = harness_seconds(Path(tmp), harness)
            results = time_pages(app_root, store, harness, pages=pages, sessions=sessions, log=log)
    findings = _findings(results)
    result = {
        "schema": 1, "kind": "dashboard", "started_at": started, "total_seconds": round(time.perf_counter() - t0, 1),
        "app_root": str(app_root), "app_commit": _commit(app_root), "tree_changed_during_run": _tree_stamp(app_root) != stamp,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "streamlit": streamlit.__version__},
        "load_before": load_before, "load_after": _load(), "store": store.sizes, "harness_s": harness_s, "targets": TARGETS,
        "pages": results, "findings": findings,
    }
    result["table"] = table_rows(result)
    return result


def _in_subprocess(*, runs: int, predictions: int, app_root: Path, pages: tuple[str, ...], sessions: int, model_runs: int) -> dict:
    """Rerun in a child whose sys.path starts with `app_root`, so its `core` and `pages` are the ones timed."""
    if not (app_root / "pages").is_dir() or not (app_root / "core").is_dir():
        raise FileNotFoundError(f"{app_root} holds no pages/ and core/ (a cxr-transfer checkout is expected)")
    with tempfile.TemporaryDirectory(prefix="cxr-bench-dashboard-out-") as tmp:
        out = Path(tmp) / "result.json"
        args = {"runs": runs, "predictions": predictions, "app_root": str(app_root), "out": str(out), "pages": list(pages),
                "sessions": sessions, "model_runs": model_runs}
        code = ("import importlib.util, json, sys\n"
                f"spec = importlib.util.spec_from_file_location('cxr_bench_dashboard', {str(Path(__file__).resolve())!r})\n"
                "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)\n"
                f"a = json.loads({json.dumps(args)!r}); a['pages'] = tuple(a['pages'])\n"
                "mod.run_dashboard_bench(in_process=True, **a)\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(app_root), *filter(None, [os.environ.get("PYTHONPATH")])])}
        subprocess.run([sys.executable, "-c", code], cwd=app_root, env=env, check=True)
        return json.loads(out.read_text())


def _findings(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        if r["error"]:
            out.append(f"{r['page']}: render failed: {r['error']}")
        out += [f"{r['page']}: {n}" for n in r["notes"] if n.startswith(("exception", "error shown"))]
        out += [f"{r['page']} / {i['label']}: {i['error']}" for i in r["interactions"] if i["error"]]
    return out


# -- the report ----------------------------------------------------------------------------------


def _judged(seconds: float | None, target: float | None) -> str:
    if seconds is None:
        return "-"
    if target is None:
        return f"{seconds:.2f}"
    return f"{seconds:.2f} ({'met' if seconds <= target else 'NOT met'})"


def table_rows(result: dict) -> list[list[str]]:
    t = result["targets"]
    rows = [["page", f"first render s (<= {t['first_render_s']:g})", "same, caches cleared", "interaction",
             f"interaction s (<= {t['interaction_s']:g}; 2nd prediction <= {t['second_prediction_s']:g})", "notes"]]
    for p in result["pages"]:
        first = [p["page"], _judged(p["first_render_s"], t["first_render_s"]), _judged(p["cold_render_s"], t["first_render_s"])]
        notes = ([f"ERROR {p['error']}"] if p["error"] else []) + [n[:160] for n in p["notes"]]
        steps = p["interactions"] or [None]
        for k, i in enumerate(steps):
            lead = first if k == 0 else ["", "", ""]
            if i is None:
                rows.append([*lead, "-", "-", "; ".join(notes)])
                continue
            note = list(notes) if k == 0 else []
            if i["fragment"]:
                note.append(f"fragment rerun; the whole script {i['full_rerun_s']:.2f} s")
            if i["target"] is None:
                note.append("not judged")
            if i["error"]:
                note.append(f"ERROR {i['error'][:200]}")
            rows.append([*lead, i["label"], _judged(i["seconds"], t.get(i["target"]) if i["target"] else None), "; ".join(note)])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def report(result: dict) -> str:
    s = result["store"]
    head = [
        f"Dashboard benchmark, {result['started_at']}: pages of {result['app_root']} at {result['app_commit']}"
        + (" (page or core files CHANGED during the run)" if result["tree_changed_during_run"] else ""),
        f"store: {s['runs']} runs ({s['finished_runs']} finished, {s['model_runs']} with fold models, {s['sweeps']} sweeps), "
        f"{s['predictions']:,} predictions ({s['predictions_per_run']} per run), {s['iterations']:,} iteration rows, {s['cams']:,} cams rows, "
        f"{s['folds']:,} fold rows, {s['splits']:,} splits rows, {s['images']} images; {s['file_mb']} MB; built in {s['build_seconds']} s",
        f"machine: {result['machine']['cpu_count']} CPUs, Python {result['machine']['python']}, Streamlit {result['machine']['streamlit']}; "
        f"load average before {result['load_before']}, after {result['load_after']}; AppTest's own cost per fresh session "
        f"{result['harness_s']:.3f} s; {result['total_seconds']} s in all",
        "first render: a fresh session after every page was rendered once (median); 'caches cleared': st.cache_data/resource emptied first",
        "",
    ]
    tail = ["", "findings:", *[f"  {f}" for f in result["findings"]]] if result["findings"] else ["", "findings: none"]
    return "\n".join(head) + format_table(result["table"]) + "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    """For running this file directly (python bench/dashboard.py ...); `python -m core bench --dashboard` is the usual way."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2500)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--app-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run_dashboard_bench(runs=args.runs, predictions=args.predictions, app_root=args.app_root, out=args.out)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
