"""A quick run end to end from each real layout: CheXpert and NIH cohorts, and DICOM files in class folders.

(MIMIC's end-to-end run is in test_cohorts.py.) Each run must finish, keep its patients
grouped, and find every image decodable.
"""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import numpy as np

from core.data.cohorts import CohortOptions, build_cohort, write_cohort
from core.training.engine import run_cross_validation
from core.results.store import Store

from conftest import tiny_config
from test_cohorts import EFFUSION, NORMAL, _jpeg, write_chexpert, write_nih
from test_dicom import make_dicom


def _distinct_images(root: Path) -> None:
    """The layout helpers write one tiny JPEG everywhere; training wants 40 px images that differ."""
    for k, path in enumerate(sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".png"))):
        path.write_bytes(_jpeg(40, 30 + 7 * k))


def _train(manifest_or_folder: Path, tmp_path: Path) -> dict:
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(data=manifest_or_folder, max_iterations=1, eval_every=1, gradcam=False), store=store)
    return store.run(result.run_id)


@pytest.mark.slow
def test_a_chexpert_cohort_trains_end_to_end(tmp_path):
    rows = [(f"patient{p:05d}/study1/view1_frontal.jpg", "Frontal", "PA", EFFUSION if p % 2 else NORMAL) for p in range(1, 13)]
    parent = write_chexpert(tmp_path / "chexpert", {"train": rows})
    _distinct_images(parent)
    manifest, _ = write_cohort(build_cohort("chexpert", parent, CohortOptions(n_per_class=0)), tmp_path / "chexpert.csv")
    run = _train(manifest, tmp_path)
    assert run["status"] == "finished" and run["n_images"] == 12 and bool(run["grouped"]) and run["leak_status"] == "clean"


@pytest.mark.slow
def test_an_nih_cohort_trains_end_to_end(tmp_path):
    rows = [(f"{p:08d}_000.png", "Effusion|Infiltration" if p % 2 else "No Finding", str(p), "PA") for p in range(1, 13)]
    root = write_nih(tmp_path / "nih", rows)
    _distinct_images(root)
    manifest, _ = write_cohort(build_cohort("nih", root, CohortOptions(n_per_class=0)), tmp_path / "nih.csv")
    run = _train(manifest, tmp_path)
    assert run["status"] == "finished" and run["n_images"] == 12 and run["positive_class"] == "Effusion"


@pytest.mark.slow
def test_dicom_class_folders_train_end_to_end(tmp_path):
    """A hospital export: one folder per class of .dcm files, MONOCHROME1 and MONOCHROME2 mixed, one damaged file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "dicom"
    for label in ("Normal", "Effusion"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(200, 1500, (40, 40)).astype(np.uint16)
            if label == "Effusion":
                pixels[26:] += 2000
            photometric = "MONOCHROME1" if i % 2 else "MONOCHROME2"
            if photometric == "MONOCHROME1":
                pixels = 4095 - pixels
            (root / label / f"{label.lower()}_{i}.dcm").write_bytes(make_dicom(pixels, photometric=photometric, bits_stored=12))
    (root / "Normal" / "damaged.dcm").write_bytes(make_dicom(np.zeros((40, 40), np.uint16))[:400])
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(data=root, max_iterations=1, eval_every=1, gradcam=False), store=store)
    run = store.run(result.run_id)
    assert run["status"] == "finished" and run["n_images"] == 12
    images = store.images(run["dataset_id"]).set_index("image_id")
    assert images.loc["Normal/damaged.dcm", "excluded_reason"] != ""
    assert "Jane" not in images.to_csv()  # no identifier from the DICOM headers reaches the store


@pytest.mark.slow
def test_several_findings_train_as_mutually_exclusive_classes(tmp_path):
    """Effusion, Cardiomegaly and normal as three classes; an image with both findings is left out (the default policy)."""
    labels = ["Effusion", "Cardiomegaly", "No Finding"]
    rows = [(f"{p:08d}_000.png", labels[p % 3], str(p), "PA") for p in range(1, 19)]
    rows.append(("00000099_000.png", "Effusion|Cardiomegaly", "99", "PA"))
    root = write_nih(tmp_path / "nih", rows)
    _distinct_images(root)
    cohort = build_cohort("nih", root, CohortOptions(findings=["Pleural Effusion", "Cardiomegaly"], n_per_class=0))
    assert "00000099_000.png" not in set(cohort.table["image_id"])
    manifest, _ = write_cohort(cohort, tmp_path / "three.csv")
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(data=manifest, max_iterations=1, eval_every=1, gradcam=False, positive_class="Effusion"),
                                  store=store)
    run = store.run(result.run_id)
    assert run["status"] == "finished" and sorted(json.loads(run["classes"])) == ["Cardiomegaly", "Effusion", "No Finding"]
    from core.results.report import table3

    row = table3(store, [result.run_id])[0]
    assert set(row["auc_one_vs_rest"]) == {"Cardiomegaly", "Effusion", "No Finding"}  # one-vs-rest AUC per class, and their mean
    assert len(store.predictions(result.run_id)["probs"].iloc[0]) == 3
