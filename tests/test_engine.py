"""End to end: a cross-validated run lands in DuckDB complete and consistent, bad files and all."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

from core import CxrError
from core.config import RunConfig
from core.training.engine import run_cross_validation
from core.results.store import SCHEMA_VERSION, Store

from conftest import blob_dataset


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished run over a folder that also holds corrupt, truncated, empty and non-image files."""
    root = tmp_path_factory.mktemp("e2e")
    data = blob_dataset(root / "data", n_per_class=12)
    (data / "Normal" / "empty.png").write_bytes(b"")
    (data / "Normal" / "notes.txt").write_text("not an image")
    good = (data / "Effusion" / "effusion_000.png").read_bytes()
    (data / "Effusion" / "truncated.png").write_bytes(good[: len(good) // 3])
    cfg = RunConfig(backbone="resnet18", weights="none", image_size=32, batch_size=8, max_iterations=6, folds=3,
                    eval_every=2, optimizer="adam", learning_rate=1e-3, head_lr_factor=1.0, device="cpu", data=str(data))
    store = Store(root / "runs")
    events = []
    result = run_cross_validation(cfg, store=store, preset="test", progress=events.append)
    return store, result, cfg, events


@pytest.mark.slow
def test_a_run_stores_every_fold_and_every_prediction_exactly_once(finished):
    store, result, cfg, _ = finished
    run = store.run(result.run_id)
    assert run["status"] == "finished" and run["n_images"] == 24
    assert json.loads(run["config"]) == json.loads(cfg.to_json())
    assert run["torch_version"] and run["code_version"] and run["device"].startswith("cpu")
    # what `auto` became on this machine is stored with the run (bf16 and NHWC on some CPUs, fp32 on others)
    from core.training.runtime import resolve
    assert f"{resolve(torch.device('cpu')).describe()}, 1 fold at a time" in run["device"]
    folds = store.folds(result.run_id)
    assert folds["fold"].tolist() == [0, 1, 2] and (folds["status"] == "finished").all()
    preds = store.predictions(result.run_id)
    splits = store.splits(result.run_id)
    assert len(preds) == 24 and preds["image_id"].is_unique
    assert set(preds["image_id"]) == set(splits["image_id"])
    merged = preds.merge(splits, on="image_id", suffixes=("", "_split"))
    assert (merged["fold"] == merged["fold_split"]).all()  # predicted in the fold it was held out in
    assert folds["n_test"].sum() == 24


def test_the_iteration_curve_is_stored_for_every_fold(finished):
    store, result, _, _ = finished
    curve = store.iterations(result.run_id)
    train = curve[curve["phase"] == "train"]
    assert train.groupby("fold")["iteration"].apply(list).tolist() == [[1, 2, 3, 4, 5, 6]] * 3
    heldout = curve[curve["phase"] == "heldout"]
    assert heldout.groupby("fold")["iteration"].apply(list).tolist() == [[2, 4, 6]] * 3


def test_stored_metrics_equal_scikit_learn_on_the_stored_predictions(finished):
    store, result, _, _ = finished
    run = store.run(result.run_id)
    preds = store.predictions(result.run_id)
    classes = json.loads(run["classes"])
    pos = classes.index(run["positive_class"])
    y, p = preds["label_index"].to_numpy(), preds["prob_positive"].to_numpy()
    assert run["auc"] == pytest.approx(roc_auc_score(y == pos, p), abs=1e-12)
    assert run["accuracy"] == pytest.approx(accuracy_score(y, preds["pred_index"]), abs=1e-12)
    tn, fp, fn, tp = confusion_matrix(y == pos, preds["pred_index"] == pos).ravel()
    assert run["sensitivity"] == pytest.approx(tp / (tp + fn)) and run["specificity"] == pytest.approx(tn / (tn + fp))
    for fold, fp_rows in preds.groupby("fold"):
        row = store.folds(result.run_id).set_index("fold").loc[fold]
        assert row["auc"] == pytest.approx(roc_auc_score(fp_rows["label_index"] == pos, fp_rows["prob_positive"]))
    assert run["auc_mean_folds"] == pytest.approx(store.folds(result.run_id)["auc"].mean())


def test_corrupt_files_are_excluded_with_reasons_not_crashes(finished):
    store, result, _, _ = finished
    images = store.images(store.run(result.run_id)["dataset_id"]).set_index("image_id")
    reasons = images["excluded_reason"]
    assert reasons["Normal/empty.png"] == "empty file"
    assert reasons["Normal/notes.txt"].startswith("not an image")
    assert reasons["Effusion/truncated.png"].startswith("cannot decode")
    assert (reasons == "").sum() == 24


def test_progress_events_cover_folds_and_iterations(finished):
    _, _, _, events = finished
    kinds = pd.Series([e["event"] for e in events]).value_counts()
    assert kinds["fold_start"] == 3 and kinds["fold_end"] == 3 and kinds["run_end"] == 1
    assert kinds["iteration"] == 3 * (6 + 3)


def test_the_store_has_a_schema_version(finished):
    store, _, _, _ = finished
    assert store.schema_version() == SCHEMA_VERSION


@pytest.mark.slow
def test_patients_never_share_folds_in_a_stored_run(tmp_path, tiny_cfg):
    root = blob_dataset(tmp_path / "d", n_per_class=12)
    rows = [{"path": str(p), "label": p.parent.name, "patient": f"pt{i // 3}"}  # 3 images per patient
            for i, p in enumerate(sorted(root.rglob("*.png")))]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    store = Store(tmp_path / "runs")
    cfg = tiny_cfg.replace(data=str(tmp_path / "m.csv"), group_column="patient", max_iterations=1)
    result = run_cross_validation(cfg, store=store)
    splits = store.splits(result.run_id).merge(pd.DataFrame({"image_id": [r["path"] for r in rows], "patient": [r["patient"] for r in rows]}), on="image_id")
    assert splits.groupby("patient")["fold"].nunique().max() == 1
    assert bool(store.run(result.run_id)["grouped"])


@pytest.mark.slow
def test_a_failing_run_is_marked_failed_and_keeps_finished_folds(tmp_path, tiny_cfg, monkeypatch):
    root = blob_dataset(tmp_path / "d", n_per_class=9)
    import core.training.engine as engine

    real = engine.train_folds
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("GPU fell off the bus")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_folds", flaky)
    store = Store(tmp_path / "runs")
    with pytest.raises(RuntimeError):
        run_cross_validation(tiny_cfg.replace(data=str(root), max_iterations=1), store=store, run_id="r1")
    assert store.run("r1")["status"] == "failed" and "fell off" in store.run("r1")["error"]
    assert store.folds("r1")["fold"].tolist() == [0]
    assert len(store.predictions("r1")) == len(store.splits("r1").query("fold == 0"))


def test_no_usable_image_is_a_clear_error(tmp_path, tiny_cfg):
    for label in ("A", "B"):
        (tmp_path / "d" / label).mkdir(parents=True)
        (tmp_path / "d" / label / "x.png").write_bytes(b"junk")
    with pytest.raises(CxrError, match="no usable image"):
        run_cross_validation(tiny_cfg.replace(data=str(tmp_path / "d")), store=Store(tmp_path / "runs"))


@pytest.mark.slow
def test_three_classes_work(tmp_path, tiny_cfg):
    rng = np.random.default_rng(0)
    from conftest import write_image

    for k, label in enumerate(["A", "B", "C"]):
        for i in range(6):
            write_image(tmp_path / "d" / label / f"{i}.png", (rng.integers(0, 60, (24, 24)) + 80 * k).astype(np.uint8))
    result = run_cross_validation(tiny_cfg.replace(data=str(tmp_path / "d"), max_iterations=2), store=Store(tmp_path / "runs"))
    preds = Store(tmp_path / "runs").predictions(result.run_id)
    assert len(preds) == 18 and len(preds["probs"][0]) == 3
    assert 0 <= result.metrics["auc"] <= 1 and np.array(result.metrics["confusion"]).shape == (3, 3)


@pytest.mark.slow
def test_demo_data_runs_grouped_by_patient_and_marked_synthetic(tmp_path, tiny_cfg):
    from core.data.phantom import make_demo_dataset

    make_demo_dataset(tmp_path / "demo", n_per_class=10, size=64, seed=1)
    store = Store(tmp_path / "runs")
    # 64 px: a 2 x 2 Grad-CAM map, so the pointing game has a chance level below 1
    result = run_cross_validation(tiny_cfg.replace(data=str(tmp_path / "demo"), max_iterations=1, image_size=64), store=store)
    run = store.run(result.run_id)
    assert bool(run["synthetic"]) and bool(run["grouped"]) and run["n_images"] == 20
    images = store.images(run["dataset_id"])
    assert set(images["label"]) == {"Normal", "Pleural Effusion"} and run["positive_class"] == "Pleural Effusion"
    folds = store.splits(result.run_id).merge(images[["image_id", "group_id"]], on="image_id")
    assert folds.groupby("group_id")["fold"].nunique().max() == 1
    # Grad-CAM: every held-out image has a predicted- and a positive-class map; positives with masks are scored
    cams = store.cams(result.run_id)
    assert len(cams) == 2 * 20 and set(cams["target"]) == {"predicted", "positive"}
    scored = cams[cams["pointing_hit"].notna()]
    assert set(scored["image_id"]) == set(images.loc[images["mask_path"] != "", "image_id"])
    assert run["pointing_game"] is not None and 0 < run["pointing_chance"] < 1
    import numpy as np

    with np.load(store.runs_dir / cams["artifact"].iloc[0]) as npz:
        assert npz["positive"].dtype == np.uint8 and npz["positive"].shape[1:] == (64, 64)
