"""External validation end to end: trained on the phantom, validated on a phantom of another seed and look, shown
beside the out-of-fold result in the report's JSON, the CLI and the Runs page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core import CxrError
from core.data.phantom import PhantomParams, make_demo_dataset
from core.results.report import table3, to_json
from core.results.store import Store
from core.training.engine import run_cross_validation

from conftest import blob_dataset, tiny_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    make_demo_dataset(root / "home", n_per_class=12, size=64, seed=0)
    # another hospital: other patients (seed), darker films and more noise
    make_demo_dataset(root / "away", n_per_class=10, size=64, seed=1, params=PhantomParams(gamma_range=(1.3, 1.7), noise_range=(0.05, 0.08)))
    store = Store(root / "runs")
    cfg = tiny_config(root / "home", image_size=32, folds=2, max_iterations=3, save_models=True, gradcam_max=4)
    result = run_cross_validation(cfg, store=store, run_id="home-run")
    return root, store, result


def test_validate_stores_the_ensembles_predictions_and_the_report_sets_them_beside_the_internal_ones(trained, capsys):
    from core.__main__ import main
    from core.training.predict import load_ensemble
    from core.training.train import predict_probs
    from core.data.prepare import cache_dir_for, prepare_data

    root, store, result = trained
    assert main(["validate", "home-run", "--data", str(root / "away"), "--name", "hospital B", "--runs-dir", str(store.runs_dir)]) == 0
    out = capsys.readouterr()
    evaluation_id = out.out.strip()
    assert evaluation_id.startswith("ext-") and "external hospital B: AUC" in out.err
    preds = store.evaluation_predictions(evaluation_id)
    assert len(preds) == 20  # every image of the other data set, once
    # the stored probability is the fold models' mean, computed here again
    ensemble = load_ensemble(store, "home-run")
    data = prepare_data(ensemble.run.config.replace(data=str(root / "away")), cache_dir=cache_dir_for(store.runs_dir))
    import torch

    mean = np.mean([predict_probs(m, torch.from_numpy(data.pixels), ensemble.device) for m in ensemble.models], axis=0)
    expected = dict(zip(data.image_ids, mean[:, ensemble.run.positive_index]))
    np.testing.assert_allclose(preds["prob_positive"], [expected[i] for i in preds["image_id"]], atol=1e-6)

    row = json.loads(to_json(table3(store, ["home-run"])))[0]
    ext = row["external"][0]
    y = preds["label_index"].to_numpy() == ensemble.run.positive_index
    assert ext["name"] == "hospital B" and ext["n_images"] == 20 and ext["n_positive"] == int(y.sum())
    assert ext["auc"] == pytest.approx(roc_auc_score(y, preds["prob_positive"]))
    assert 0 <= ext["p_vs_internal"] <= 1 and ext["internal_prevalence"] == pytest.approx(0.5)
    for key in ("auc_ci_low", "sensitivity_ci_low", "specificity", "calibration_slope", "brier", "decision_curve", "subgroups", "views"):
        assert key in ext, key
    assert set(ext["views"]) <= {"PA", "AP"} and sum(ext["views"].values()) == pytest.approx(1.0)
    assert (store.runs_dir / "home-run" / "external" / f"{evaluation_id}.npz").is_file()  # a Grad-CAM sample


def test_the_runs_page_shows_internal_and_external_side_by_side(trained, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root, store, _ = trained
    if store.evaluations("home-run").empty:
        from core.training.validate import validate_run

        validate_run(store, "home-run", str(root / "away"), name="hospital B")
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(ROOT / "pages" / "2_Runs.py"), default_timeout=120).run()
    assert not at.exception
    table = next(df.value for df in at.dataframe if "evaluated on" in df.value.columns)
    assert table["evaluated on"].tolist()[0] == "internal (out of fold)" and "hospital B (synthetic)" in table["evaluated on"].tolist()
    assert at.text_input(key="runs_validate_data") is not None  # and a validation can be started from here


def test_validate_says_what_is_missing(trained, tmp_path):
    from core.training.validate import validate_run

    root, store, _ = trained
    other = blob_dataset(tmp_path / "blobs", n_per_class=4)  # classes Effusion / Normal, not the phantom's
    with pytest.raises(CxrError, match="classes .* are not run home-run's"):
        validate_run(store, "home-run", str(other))
    run_cross_validation(tiny_config(other, folds=2, max_iterations=1, gradcam=False), store=store, run_id="no-models")
    with pytest.raises(CxrError, match="kept no fold models; start a run with --set save_models=true"):
        validate_run(store, "no-models", str(root / "away"))
