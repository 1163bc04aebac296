"""What the pages need from the engine, as plain data (no Streamlit, no torch): the pages stay thin."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from core import CxrError
from core.data.sources import DEMO_MARKER
from core.results.eta import eta_seconds
from core.results.records import RunRecord, RunSummary
from core.results.store import Store


def demo_summary(folder: Path) -> dict | None:
    """Images per class and patients of a demo folder, or None when there is none."""
    manifest = Path(folder) / "manifest.csv"
    if not (Path(folder) / DEMO_MARKER).is_file() or not manifest.is_file():
        return None
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return {"per_class": table["label"].value_counts().sort_index().to_dict(), "patients": table["patient_id"].nunique()}


def make_demo(folder: Path, *, n_per_class: int = 200, size: int = 256, seed: int = 0) -> Path:
    from core.data.phantom import make_demo_dataset
    from core.safety import refuse_in_demo_mode

    refuse_in_demo_mode("creating demo data")
    return make_demo_dataset(folder, n_per_class=n_per_class, size=size, seed=seed)


def stored_runs(runs_dir: Path) -> pd.DataFrame:
    """Every run with its metrics (fractions) and who runs it, newest first, as the store has them: one query, cacheable
    until the store changes."""
    return Store(Path(runs_dir)).runs_overview()


def runs_overview(runs_dir: Path, stored: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every run with its metrics and the status it has now: a running run whose process is gone reads 'interrupted'.

    `stored`: `stored_runs`' frame when the caller keeps it; liveness is checked now, for active runs only.
    """
    from core.jobs.lifecycle import effective_status

    runs = (stored_runs(runs_dir) if stored is None else stored).copy()
    if runs.empty:
        return runs
    active = runs["status"].isin(["running", "queued"])
    if active.any():
        runs.loc[active, "status"] = [effective_status(r) for r in runs.loc[active, ["status", "pid", "host", "pid_start"]].to_dict("records")]
    return runs.drop(columns=["pid", "host", "pid_start"])


def store_version(runs_dir: Path) -> tuple[int, ...]:
    """Changes with every committed write to the store: pages key what they cache on it (two stats, no query)."""
    return Store(Path(runs_dir)).version()


def evaluation_ids(runs_dir: Path, run_id: str) -> tuple[str, ...]:
    """A run's external validations (one small query): part of what a cached run detail is keyed on."""
    return Store(Path(runs_dir)).evaluation_ids(run_id)


def finished_runs(runs_dir: Path) -> list[RunSummary]:
    """The finished runs, newest first, to choose among (one light query)."""
    return Store(Path(runs_dir)).run_summaries(status="finished")


def run_record(runs_dir: Path, run_id: str) -> RunRecord:
    """One run as a typed record (one query): cheap enough to read on every rerun, e.g. to key a cache."""
    return Store(Path(runs_dir)).run_record(run_id)


def run_detail(runs_dir: Path, run_id: str) -> dict:
    """Everything the run-detail view shows, computed from the store (no training code involved)."""
    with Store(Path(runs_dir)).reading() as store:
        return _run_detail(store, run_id)


def _run_detail(store: Store, run_id: str) -> dict:
    from core.results.report import roc_with_band, run_row

    run = store.run_record(run_id)
    row, scores, truth = run_row(store, run_id)
    folds = store.folds(run_id)
    return {
        "scores": np.fromiter(scores.values(), float, len(scores)),  # pooled out-of-fold, for the threshold slider
        "truth": np.fromiter(truth.values(), bool, len(truth)),
        "run": run,
        "row": row,
        "classes": list(run.classes),
        "positive": run.positive_class,
        "negative": run.negative_class,
        "folds": with_fold_auc_ci(store, run_id, folds[["fold", "n_train", "n_test", "iterations", "accuracy", "sensitivity",
                                                           "specificity", "auc", "train_seconds", "node"]], run),
        "curve": store.iterations(run_id),
        "roc": roc_with_band(store, run_id, n_boot=300),
        "config": dataclasses.asdict(run.config),
    }


def with_fold_auc_ci(store: Store, run_id: str, folds: pd.DataFrame, run: RunRecord) -> pd.DataFrame:
    """Each fold's AUC with its 95 % DeLong interval (from that fold's stored predictions), for the forest plot."""
    import numpy as np

    from core.results.stats import auc_delong

    preds = store.scored(run)
    pos = run.positive_index
    low, high = [], []
    for fold in folds["fold"]:
        part = preds[preds["fold"] == fold]
        y = part["label_index"].to_numpy() == pos
        if 0 < y.sum() < len(y):
            ci = auc_delong(y, part["prob_positive"].to_numpy(dtype=float))
            low.append(ci.low), high.append(ci.high)
        else:  # a fold with one class has no AUC interval
            low.append(np.nan), high.append(np.nan)
    return folds.assign(auc_ci_low=low, auc_ci_high=high)


def threshold_rates(detail: dict, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV with Wilson intervals at a user-chosen threshold, from a run's detail
    (its pooled out-of-fold truth and scores ride along in it, so a slider move reads nothing from the store)."""
    from core.results.stats import at_threshold

    return at_threshold(detail["truth"], detail["scores"], threshold)


def sweep_options(runs_dir: Path) -> dict[str, str]:
    df = Store(Path(runs_dir)).finished_sweeps()
    return {} if df.empty else {r.sweep_id: f"{r.sweep_id} ({r.n} runs)" for r in df.itertuples()}


def comparison(runs_dir: Path, run_ids: list[str]) -> dict:
    """Table 3 rows (first run = reference), a display table, and each run's ROC for overlaying."""
    from core.results.report import roc_with_band, table3, table_cells

    with Store(Path(runs_dir)).reading() as store:
        rows = table3(store, run_ids)
        curves = [(r["name"], roc_with_band(store, r["run_id"], n_boot=0), r["auc"]) for r in rows]
        training = [(r["name"], store.iterations(r["run_id"])) for r in rows]
    header, body = table_cells(rows)
    return {"rows": rows, "table": pd.DataFrame(body, columns=header).assign(run=[r["name"] for r in rows]), "curves": curves,
            "training": training, "varies": sorted(rows[0]["varies"])}


def sweep_runs(runs_dir: Path, sweep_id: str) -> list[str]:
    from core.results.report import sweep_run_ids

    return sweep_run_ids(Store(Path(runs_dir)), sweep_id)


def gallery(runs_dir: Path, run_id: str, *, outcomes: list[str], target: str = "predicted", fold: int | None = None,
            limit: int = 24, display: int = 256) -> list[dict]:
    """Gallery items sorted by confidence: original and heat map as arrays, with outcome, probability and localisation."""
    if not outcomes:
        return []
    with Store(Path(runs_dir)).reading() as store:
        return _gallery(store, run_id, outcomes=outcomes, target=target, fold=fold, limit=limit, display=display)


def _gallery(store: Store, run_id: str, *, outcomes: list[str], target: str, fold: int | None, limit: int, display: int) -> list[dict]:
    from PIL import Image

    from core.data.decode import DecodeError, decode_gray

    runs_dir = store.runs_dir
    run = store.run_record(run_id)
    # filtered, sorted and cut in DuckDB: a large data set's heat-map index and image table never come whole into pandas
    cams = store.gallery_cams(run_id, target=target, outcomes=outcomes, fold=fold, limit=limit)
    if cams.empty:
        return []
    images = store.image_files(run.dataset_id, cams["image_id"].tolist()).set_index("image_id")
    loaded: dict[str, np.lib.npyio.NpzFile] = {}
    items = []
    for r in cams.itertuples():
        if r.artifact not in loaded:
            loaded[r.artifact] = np.load(Path(runs_dir) / r.artifact)
        npz = loaded[r.artifact]
        try:
            gray = decode_gray(images.loc[r.image_id, "path"], display)
        except DecodeError as exc:  # the data set moved since the run: say so instead of failing the page
            gray = np.zeros((display, display), np.uint8)
            note = f"image unavailable ({exc})"
        else:
            note = ""
        mask = None
        mask_path = images.loc[r.image_id, "mask_path"]
        if mask_path and Path(mask_path).is_file():
            with Image.open(mask_path) as m:
                mask = np.asarray(m.convert("L").resize((display, display), Image.NEAREST)) > 127
        items.append({"image_id": r.image_id, "outcome": r.outcome, "prob_positive": r.prob_positive, "fold": int(r.fold),
                      "gray": gray, "cam": npz[target][r.slot], "mask": mask,
                      "pointing_hit": None if pd.isna(r.pointing_hit) else bool(r.pointing_hit),
                      "energy_in_mask": None if pd.isna(r.energy_in_mask) else float(r.energy_in_mask), "note": note})
    for npz in loaded.values():
        npz.close()
    return items


def case_image(runs_dir: Path, run_id: str, image_id: str, *, display: int = 384) -> np.ndarray:
    """One image of a run's data set, grey at `display` px (the Review page's cases); a CxrError says why it cannot be read."""
    from core.data.decode import DecodeError, decode_gray

    store = Store(Path(runs_dir))
    run = store.run_record(run_id)
    files = store.image_files(run.dataset_id, [image_id])
    if files.empty:
        raise CxrError(f"{image_id!r} is not an image of run {run_id}'s data set")
    try:
        return decode_gray(files["path"].iloc[0], display)
    except DecodeError as exc:
        raise CxrError(f"cannot read {image_id}: {exc} (has the data set moved since the run?)") from None


def cams_for(runs_dir: Path, run_id: str, image_ids: list[str], *, target: str = "predicted") -> dict[str, dict]:
    """Another run's heat maps of the given images, to show the same images across runs side by side.

    Only images the run stored a heat map for are returned (a run keeps at most gradcam_max per fold).
    """
    import numpy as np

    if not image_ids:
        return {}
    store = Store(Path(runs_dir))
    rows = store.cams_of(run_id, target, image_ids)
    out = {}
    for artifact, part in rows.groupby("artifact"):
        with np.load(Path(runs_dir) / artifact) as npz:
            maps = npz[target]
            for r in part.itertuples():
                out[r.image_id] = {"cam": maps[r.slot], "outcome": r.outcome, "prob_positive": float(r.prob_positive), "fold": int(r.fold)}
    return out


def job_progress(runs_dir: Path, run_id: str) -> dict:
    """Live state of a (background) run: status, iterations done of the budget, elapsed, ETA, the curve so far."""
    from core.config import budget
    from core.jobs.gpuqueue import holder
    from core.jobs.launch import log_tail
    from core.jobs.lifecycle import effective_status

    store = Store(Path(runs_dir))
    run = store.find_run(run_id)
    if run is None:  # still reading data, or failed before the run was created: the log says which
        return {"status": "starting", "log": log_tail(runs_dir, run_id), "fraction": 0.0, "curve": pd.DataFrame()}
    cfg = RunRecord.from_row(run).config
    curve = store.iterations(run_id)
    done = int((curve["phase"] == "train").sum()) if not curve.empty else 0
    # the same budget the engine uses, for a training fold of about (k-1)/k of the images
    n_train = int(run["n_images"] or 0) * (cfg.folds - 1) // cfg.folds
    total = cfg.folds * cfg.repeats * budget(cfg, n_train)[0] if n_train else None
    status = effective_status(run)  # 'interrupted' when the process is gone without saying why (killed, power loss)
    elapsed = float(curve.groupby("fold")["elapsed_s"].max().sum()) if not curve.empty else 0.0
    fraction = min(1.0, done / total) if total else 0.0
    folds = store.folds(run_id, every_repeat=True)
    eta = eta_seconds(curve, folds, done=done, total=total, n_folds=cfg.folds * cfg.repeats) if status == "running" else None
    folds_done = int((folds["status"] == "finished").sum()) if not folds.empty else 0
    # where each finished fold trained (a Ray run spreads them over a cluster's machines)
    nodes = {int(f) + 1: n for f, n in zip(folds["fold"], folds["node"]) if isinstance(n, str) and n} if not folds.empty else {}
    return {"status": status, "fraction": fraction, "done": done, "total": total, "elapsed_s": elapsed, "eta_s": eta,
            "curve": curve, "error": run.get("error"), "log": log_tail(runs_dir, run_id), "folds_done": folds_done, "nodes": nodes,
            "device": run.get("device") or "",
            "gpu_holder": holder(Path(runs_dir)) if status == "queued" else ""}


def active_runs(runs_dir: Path) -> dict[str, str]:
    """Runs whose process is training or queued now, wherever they were started (this browser, another, the
    command line), as {run_id: label}, newest first: the Train page lets a user watch any of them."""
    from core.jobs.lifecycle import run_alive

    store = Store(Path(runs_dir))
    if not store.path.exists():
        return {}
    return {r["run_id"]: f"{r['name'] or r['run_id']} · {r['status']} · {r['preset'] or 'custom'}"
            for r in store.active_runs() if run_alive(r)}


def unfinished_candidates(runs_dir: Path) -> list[dict]:
    """What the store says about runs that are not finished (one query): cacheable until the store changes."""
    from core.jobs.lifecycle import unfinished_candidates as candidates

    return candidates(Store(Path(runs_dir)))


def unfinished_runs(runs_dir: Path, candidates: list[dict] | None = None) -> list[dict]:
    """Failed, cancelled and interrupted runs for the Resume buttons: id, name, status, folds done of k, why it stopped.

    `candidates`: `unfinished_candidates`' rows, when the caller keeps them; whose process is alive is checked now.
    """
    from core.jobs.lifecycle import unfinished_from

    return unfinished_from(unfinished_candidates(runs_dir) if candidates is None else candidates)


def sweep_progress(runs_dir: Path, sweep_id: str, n_runs: int) -> dict:
    """Live state of a background sweep: its runs so far (name, status, AUC), the one training now, and the job log."""
    from core.jobs.launch import log_tail
    from core.jobs.lifecycle import process_alive

    runs = Store(Path(runs_dir)).sweep_runs(sweep_id)
    if runs.empty:  # the process is still reading the data set (or failed before its first run: the log says)
        return {"status": "starting", "done": 0, "total": n_runs, "table": pd.DataFrame(), "current": None,
                "log": log_tail(runs_dir, sweep_id)}
    current = runs[runs["status"].isin(["running", "queued"])]
    alive = bool(len(current)) and process_alive(current["pid"].iloc[0], current["host"].iloc[0], current["pid_start"].iloc[0])
    done = int((runs["status"] == "finished").sum())
    if done == n_runs:
        status = "finished"
    elif alive:
        status = "running"
    elif (runs["status"].isin(["failed", "cancelled"])).any():
        status = str(runs.loc[runs["status"].isin(["failed", "cancelled"]), "status"].iloc[-1])
    else:
        status = "interrupted" if len(current) else "starting"
    table = runs[["name", "status", "auc", "train_seconds"]]
    return {"status": status, "done": done, "total": n_runs, "table": table,
            "current": str(current["run_id"].iloc[0]) if alive else None, "log": log_tail(runs_dir, sweep_id)}


def environment() -> dict:
    """What this machine offers: GPU name (or None), versions, and which backbones have ImageNet weights cached."""
    import torch

    from core.training.models import BACKBONES, imagenet_available, imagenet_cache_file

    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "imagenet_cached": {name: imagenet_available(name) for name in BACKBONES},
        "cache_dir": str(imagenet_cache_file("resnet50").parent),
    }


def download_imagenet_weights(backbone: str) -> Path:
    """Fetch a backbone's ImageNet weights into torch hub's cache (core.training.models.download_imagenet); refused in demo mode."""
    from core.safety import refuse_in_demo_mode
    from core.training.models import download_imagenet

    refuse_in_demo_mode("downloading weights")
    return download_imagenet(backbone, progress=False)


def start_quick_demo(runs_dir: Path, demo_dir: Path) -> str:
    """Start the quick preset on the demo data in the background, keeping its fold models so that Predict can use the
    run straight after; returns the run id."""
    from core.config import preset
    from core.jobs.launch import start_run

    cfg = preset("quick").replace(data=str(demo_dir), save_models=True)
    run_id, _ = start_run(cfg, runs_dir=Path(runs_dir), preset="quick", name="quick demo")
    return run_id


def data_overview(runs_dir: Path, *, data: str, source: str = "auto", path_column: str = "path", label_column: str = "label",
                  group_column: str = "", positive_labels: str = "", fold_column: str = "", folds: int = 10, seed: int = 0,
                  group_by_patient: bool = True, thumb: int = 96, progress=None, with_preview: bool = True) -> dict:
    """A data set as the Data page shows it: counts, patients, exclusions with reasons, samples per class, a fold preview.

    The fold preview is `fold_preview` of the same dict (`with_preview=False` leaves it out): the Data page
    recomputes it alone when the folds change.
    """
    import numpy as np

    from core.config import RunConfig
    from core.data.prepare import cache_dir_for, prepare_data

    cfg = RunConfig(data=data, source=source, path_column=path_column, label_column=label_column, group_column=group_column,
                    positive_labels=positive_labels, fold_column=fold_column, image_size=thumb, folds=folds, seed=seed)
    prepared = prepare_data(cfg, cache_dir=cache_dir_for(Path(runs_dir)), progress=progress)
    table = prepared.manifest.table
    included = table[table["excluded_reason"] == ""]
    samples = {c: [prepared.pixels[i] for i in np.flatnonzero(prepared.labels == k)[:6]] for k, c in enumerate(prepared.classes)}
    overview = {
        "source": prepared.manifest.source, "synthetic": prepared.manifest.synthetic,
        "balance": included["label"].value_counts().sort_index().rename_axis("class").reset_index(name="images"),
        "patients": int(included["group"].nunique()) if prepared.groups is not None else None,
        "excluded": table.loc[table["excluded_reason"] != "", ["image_id", "path", "excluded_reason"]],
        "samples": samples, "n_images": len(included),
        "user_folds": prepared.user_folds is not None,
        "flow": pd.DataFrame(prepared.manifest.flow["steps"]) if prepared.manifest.flow and prepared.manifest.flow.get("steps") else None,
        # what fold_preview needs, so a change of folds, seed or grouping reads no image again
        "labels": prepared.labels, "groups": prepared.groups, "classes": list(prepared.classes), "fold_of_user": prepared.user_folds,
    }
    if not with_preview:
        return overview
    return overview | fold_preview(overview, folds=folds, seed=seed, group_by_patient=group_by_patient)


def fold_preview(overview: dict, *, folds: int, seed: int, group_by_patient: bool) -> dict:
    """Images per fold and class as the engine would split them, and the leakage audit it repeats before training."""
    from core import CxrError
    from core.data.splits import assign_folds, audit_leakage

    labels, groups, classes = overview["labels"], overview["groups"], overview["classes"]
    try:
        if overview["fold_of_user"] is not None:
            fold_of = overview["fold_of_user"]
        else:
            fold_of = assign_folds(labels, groups if group_by_patient else None, folds=folds, seed=seed, class_names=classes)
        preview = pd.crosstab(pd.Series(fold_of + 1, name="fold"), pd.Series([classes[i] for i in labels], name="class"))
        return {"folds": preview, "fold_error": "", "audit": audit_leakage(fold_of, groups)}
    except CxrError as exc:
        return {"folds": pd.DataFrame(), "fold_error": str(exc), "audit": None}


def predictable_runs(runs_dir: Path) -> list[RunSummary]:
    """Finished runs that kept their fold models (save_models=true), for the Predict page: one query, then a file check
    per run that stops at its first missing model (it opened the store once per run before: 55 s for 2,500 runs)."""
    store = Store(Path(runs_dir))
    return [r for r in store.run_summaries(status="finished") if store.fold_model_files(r)]


def dataset_images(runs_dir: Path, run_id: str, limit: int = 200) -> dict[str, str]:
    """{image_id: path} of a run's data set, to pick an image without uploading one."""
    store = Store(Path(runs_dir))
    images = store.image_files(store.run_record(run_id).dataset_id, limit=limit)
    return dict(zip(images["image_id"], images["path"]))


def predictions_csv(runs_dir: Path, run_id: str) -> bytes:
    """A run's out-of-fold predictions as CSV: image id, fold (from 1), true class, the positive class's probability and the
    class called at 0.5. No patient id: readers of the file need none."""
    with Store(Path(runs_dir)).reading() as store:
        run = store.run_record(run_id)
        preds = store.scored(run)
    classes = list(run.classes)
    table = pd.DataFrame({
        "image_id": preds["image_id"], "fold": preds["fold"] + 1,
        "true_class": [classes[i] for i in preds["label_index"]],
        f"p_{run.positive_class}": preds["prob_positive"].round(6),
        "called_at_0.5": [classes[i] for i in preds["pred_index"]],
    })
    return table.to_csv(index=False).encode()


def held_out_prediction(runs_dir: Path, run_id: str, image_id: str) -> dict | None:
    """A data-set image's true class and its out-of-fold prediction: the probability from the one fold model that held the
    image out (the run's other fold models trained on it). None when the run holds no prediction for the image."""
    with Store(Path(runs_dir)).reading() as store:
        run = store.run_record(run_id)
        found = store.prediction(run_id, image_id)
    if found is None:
        return None
    fold, label_index, prob = found
    return {"true_class": run.classes[int(label_index)], "fold": int(fold), "prob_positive": float(prob), "folds": run.folds,
            "positive_class": run.positive_class}


def disk_used(runs_dir: Path, run_id: str) -> int:
    """Bytes under runs/<run_id>/ (fold models, heat maps) plus its job log."""
    folder = Path(runs_dir) / run_id
    files = list(folder.rglob("*")) if folder.is_dir() else []
    log = Path(runs_dir) / "jobs" / f"{run_id}.log"
    return sum(f.stat().st_size for f in files if f.is_file()) + (log.stat().st_size if log.is_file() else 0)


def update_run_labels(runs_dir: Path, run_id: str, *, name: str, tags: str, notes: str) -> None:
    from core.safety import refuse_in_demo_mode

    refuse_in_demo_mode("renaming a run")
    Store(Path(runs_dir)).update_run(run_id, name=name.strip() or run_id, tags=tags.strip(), notes=notes.strip())


def delete_run(runs_dir: Path, run_id: str) -> None:
    from core.safety import refuse_in_demo_mode

    refuse_in_demo_mode("deleting a run")
    Store(Path(runs_dir)).delete_run(run_id)
