"""Dashboard pages against a tiny finished run in a temporary runs folder (AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.training.engine import run_cross_validation
from core.results.store import Store

from conftest import blob_dataset, tiny_config

PAGES = Path(__file__).resolve().parent.parent / "pages"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    data = blob_dataset(root / "data", n_per_class=12)
    cfg = tiny_config(data, batch_size=8, max_iterations=4, folds=3, eval_every=2)
    store = Store(root / "runs")
    result = run_cross_validation(cfg, store=store, name="tiny run")
    return store, result


@pytest.mark.slow
def test_runs_page_shows_the_run_metrics_folds_and_threshold_rates(finished_run, monkeypatch):
    store, result = finished_run
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "2_Runs.py"), default_timeout=120).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AUC (pooled)"] == f"{100 * result.metrics['auc']:.2f} %"  # the study's unit, as Table 3
    assert metrics["Accuracy"] == f"{100 * result.metrics['accuracy']:.1f} %"
    # how it was computed (what precision=auto became, folds at once) is shown with the results
    assert any("Computed on cpu" in c.value and "1 fold at a time" in c.value for c in at.caption)
    tables = [df.value for df in at.dataframe]
    rates = next(t for t in tables if "measure" in t.columns)
    assert rates["measure"].tolist() == ["sensitivity", "specificity", "PPV (positive predictive value)",
                                         "NPV (negative predictive value)", "accuracy"]
    folds = next(t for t in tables if "fold" in t.columns)
    assert folds["fold"].tolist() == [1, 2, 3]  # numbered from 1, as in the plots
    stored = store.folds(result.run_id)
    assert folds["accuracy %"].tolist() == (stored["accuracy"] * 100).round(1).tolist()  # percentages, like the run's metrics
    for ci, auc in zip(folds["AUC 95 % CI (DeLong)"], folds["AUC %"]):  # "low-high %" around the fold's AUC ("" for a one-class fold)
        assert ci == "" or float(ci.split("-")[0]) <= auc <= float(ci.split("-")[1].rstrip(" %"))
    # moving the threshold to 1.0 calls (almost) nothing positive: sensitivity drops to the share scored exactly 1
    at.slider(key="runs_threshold").set_value(1.0).run()
    rates_after = next(df.value for df in at.dataframe if "measure" in df.value.columns)
    assert rates_after.set_index("measure").loc["specificity", "value"] == "100.0 %"
    # calibration in numbers and the decision curve, under the calibration plot
    assert any(c.value.startswith("Brier score") and "calibration slope" in c.value for c in at.caption)
    assert any(h.value == "Would acting on it help?" for h in at.subheader)


def test_runs_page_without_runs_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "2_Runs.py"), default_timeout=60).run()
    assert not at.exception and "No finished run yet" in at.info[0].value


@pytest.mark.slow
def test_compare_page_shows_table3_for_a_sweep(tmp_path, monkeypatch):
    from core.training.sweep import parse_grid, run_sweep

    data = blob_dataset(tmp_path / "data", n_per_class=9)
    base = tiny_config(data, batch_size=8, folds=3, eval_every=2, gradcam=False)
    store = Store(tmp_path / "runs")
    sweep_id, results = run_sweep(base, parse_grid(["max_iterations=1,3"]), store=store)
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "3_Compare.py"), default_timeout=120).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.index) == ["custom · iters 1", "custom · iters 3"]  # named by what the sweep varies
    assert "DeLong p vs first" in table.columns and table["DeLong p vs first"].iloc[0] == "-"


def test_gradcam_page_shows_original_and_overlay_per_image(finished_run, monkeypatch):
    store, result = finished_run
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "4_Grad-CAM.py"), default_timeout=120).run()
    assert not at.exception
    cams = store.cams(result.run_id)
    shown = min(12, int((cams["target"] == "predicted").sum()))
    assert len(at.get("image")) == 2 * shown + 1  # original + overlay for each image, and the colour scale
    at.multiselect(key="cam_outcomes").set_value(["TN"]).run()
    n_tn = int(((cams["target"] == "predicted") & (cams["outcome"] == "TN")).sum())
    assert len(at.get("image")) == 2 * min(12, n_tn) + 1
    assert at.radio(key="cam_per_row").value == 2  # two pairs a row unless asked: thumbnails large enough to read
    at.radio(key="cam_per_row").set_value(1).run()  # the enlarged view: each pair at full width
    assert not at.exception and len(at.get("image")) == 2 * min(12, n_tn) + 1


def test_overlay_blends_a_resized_heat_map():
    import numpy as np

    from core.results.overlay import mask_outline, overlay

    gray = np.zeros((8, 8), np.uint8)
    cam = np.zeros((2, 2), np.uint8)
    cam[1, 1] = 255
    out = overlay(gray, cam, opacity=1.0)
    assert out.shape == (8, 8, 3) and out[7, 7].tolist() == [253, 231, 37] and out[0, 0].tolist() == [68, 1, 84]
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    assert mask_outline(mask).sum() == 12


def test_train_page_lets_you_watch_a_run_started_on_the_command_line(tmp_path, monkeypatch):
    """A run whose process lives (here: this test's own process stands in for `python -m core run`) can be watched;
    a run whose process is gone is not offered."""
    import os
    import socket

    from core.jobs.lifecycle import start_token

    store = Store(tmp_path / "runs")
    cfg = tiny_config("d").to_json()
    store.create_run("dead", status="running", name="killed run", folds=3, n_images=24, config=cfg, pid=2**22 + 7)
    store.create_run("live", status="running", name="terminal run", preset="quick", folds=3, n_images=24, config=cfg,
                     pid=os.getpid(), host=socket.gethostname(), pid_start=start_token(os.getpid()))
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert not at.exception
    watch = at.selectbox(key="train_watch")
    assert watch.options == ["terminal run · running · quick"] and watch.value == "live"
    assert any(h.value == "Run live: running" for h in at.subheader)


@pytest.mark.slow
def test_train_page_starts_a_background_run_that_lands_in_the_store(tmp_path, monkeypatch):
    import time

    data = blob_dataset(tmp_path / "data", n_per_class=6)
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert not at.exception
    at.text_input(key="train_data").set_value(str(data))
    for field, value in {"image_size": 32, "max_iterations": 2, "folds": 2, "batch_size": 4}.items():
        at.number_input(key=f"train_quick_{field}").set_value(value)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception and not at.error
    run_id = at.session_state["train_job"]
    store = Store(tmp_path / "runs")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = store.list_runs()
        if not runs.empty and runs["status"].iloc[0] != "running":
            break
        time.sleep(1)
    run = store.run(run_id)
    assert run["status"] == "finished" and run["preset"] == "quick"
    assert '"image_size": 32' in run["config"] and '"max_iterations": 2' in run["config"]


@pytest.mark.slow
def test_train_page_starts_a_background_sweep_on_shared_folds(tmp_path, monkeypatch):
    """'Start sweep' runs every grid combination in one background process, all on the same folds (so DeLong pairs them)."""
    import time

    data = blob_dataset(tmp_path / "data", n_per_class=6)
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    at.text_input(key="train_data").set_value(str(data))
    for field, value in {"image_size": 32, "folds": 2, "batch_size": 4}.items():
        at.number_input(key=f"train_quick_{field}").set_value(value)
    at.checkbox(key="train_quick_gradcam").set_value(False)
    at.text_area(key="train_grid").set_value("max_iterations=1,2")
    at.button[1].click().run()  # the form's second submit button: Start sweep
    assert not at.exception and not at.error
    sweep_id, n_runs = at.session_state["train_sweep"]
    assert n_runs == 2
    store = Store(tmp_path / "runs")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = store.query("SELECT run_id, status FROM runs WHERE sweep_id = ?", [sweep_id])
        if len(runs) == 2 and (runs["status"] != "running").all():
            break
        time.sleep(1)
    assert runs["status"].tolist() == ["finished", "finished"]
    a, b = (store.splits(r).set_index("image_id")["fold"] for r in runs["run_id"])
    assert a.sort_index().equals(b.sort_index())
    at.run()
    assert "2 of 2 runs finished" in at.subheader[0].value


def test_train_page_refuses_a_bad_sweep_grid_before_starting(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    at.text_area(key="train_grid").set_value("folds=3,5")
    at.button[1].click().run()
    assert not at.exception and "cannot vary" in at.error[0].value
    at.text_area(key="train_grid").set_value("learning_rate=0.1,-2")
    at.button[1].click().run()
    assert "learning_rate must be greater than 0" in at.error[0].value
    assert "train_sweep" not in at.session_state and not (tmp_path / "runs" / "jobs").exists()


def test_train_page_refuses_bad_settings_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    at.number_input(key="train_quick_learning_rate").set_value(-1.0)
    at.button[0].click().run()
    assert not at.exception and "learning_rate must be greater than 0" in at.error[0].value
    assert "train_job" not in at.session_state


def test_train_page_shows_the_ray_cluster_asked_for_and_says_when_there_is_none(tmp_path, monkeypatch):
    from core import CxrError

    asked = []

    def fake_status(address):
        asked.append(address)
        if address == "nowhere:1":
            raise CxrError("could not reach a Ray cluster at 'nowhere:1'")
        return {"nodes": 2, "cpus": 16.0, "gpus": 2.0, "free_cpus": 12.0, "free_gpus": 1.0, "hosts": ["a", "b"]}

    monkeypatch.setattr("core.jobs.launch.cluster_status", fake_status)
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert at.selectbox(key="train_quick_executor").value == "local"  # the form offers the executor
    at.text_input(key="train_ray_address").set_value("head:6379")
    at.button(key="train_show_cluster").click().run()
    assert asked == ["head:6379"] and not at.exception
    assert {m.label: m.value for m in at.metric} == {"Nodes": "2", "CPUs free": "12 of 16", "GPUs free": "1 of 2"}
    at.text_input(key="train_ray_address").set_value("nowhere:1")
    at.button(key="train_show_cluster").click().run()
    assert "could not reach a Ray cluster" in at.error[0].value


def test_train_page_hides_momentum_for_adam_and_starts_with_the_chosen_optimiser(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr("core.jobs.launch.start_run", lambda cfg, **kw: (started.append(cfg) or ("r-1", 1)))
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CXR_DATA_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert at.selectbox(key="train_quick_optimizer").value == "adam"  # the quick preset's
    assert "train_quick_momentum" not in [w.key for w in at.number_input]
    at.selectbox(key="train_quick_optimizer").set_value("sgdm").run()
    at.number_input(key="train_quick_momentum").set_value(0.8)
    at.text_input(key="train_data").set_value(str(tmp_path))
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert started[0].optimizer == "sgdm" and started[0].momentum == 0.8


def test_data_page_shows_balance_exclusions_and_folds(tmp_path, monkeypatch):
    data = blob_dataset(tmp_path / "data", n_per_class=10)
    (data / "Normal" / "broken.png").write_bytes(b"not a png")
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "0_Data.py"), default_timeout=120).run()
    at.radio(key="data_kind").set_value("folders").run()
    at.text_input(key="data_path").set_value(str(data)).run()
    at.number_input(key="data_folds").set_value(5).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Usable images"] == "20" and metrics["Excluded files"] == "1" and metrics["Patients"] == "unknown"
    excluded = at.dataframe[-1].value
    assert excluded["excluded_reason"].tolist() == ["not an image (format not recognised)"]
    folds = at.dataframe[0].value
    assert len(folds) == 5 and folds.to_numpy().sum() == 20


def test_data_page_explains_a_bad_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "0_Data.py"), default_timeout=60).run()
    at.text_input(key="data_path").set_value(str(tmp_path / "missing")).run()
    assert not at.exception and "does not exist" in at.error[0].value


@pytest.fixture(scope="module")
def run_with_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = blob_dataset(root / "data", n_per_class=9)
    cfg = tiny_config(data, batch_size=8, max_iterations=2, folds=3, eval_every=1, save_models=True, gradcam=False)
    store = Store(root / "runs")
    return store, run_cross_validation(cfg, store=store), data


@pytest.mark.slow
def test_prediction_is_the_mean_of_the_fold_models(run_with_models):
    import numpy as np

    from core.training.predict import predict_image

    store, result, data = run_with_models
    image = sorted((data / "Effusion").glob("*.png"))[0]
    p = predict_image(store, result.run_id, image.read_bytes())
    assert len(p.fold_probs) == 3 and p.prob_positive == pytest.approx(np.mean(p.fold_probs))
    assert p.call in ("Effusion", "Normal") and p.cam.shape == (32, 32)


def test_a_dicom_upload_is_classified_like_the_same_pixels_as_png(run_with_models):
    """Hospitals export DICOM: the same pixels as DICOM (MONOCHROME2, 8-bit) and as PNG give the same probability."""
    import io

    import numpy as np
    from PIL import Image

    from core.training.predict import predict_image
    from test_dicom import make_dicom

    store, result, data = run_with_models
    pixels = np.asarray(Image.open(sorted((data / "Effusion").glob("*.png"))[0]))
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    from_dicom = predict_image(store, result.run_id, make_dicom(pixels, WindowCenter=127.5, WindowWidth=256))
    from_png = predict_image(store, result.run_id, png.getvalue())
    assert from_dicom.prob_positive == pytest.approx(from_png.prob_positive, abs=0.02)


def test_a_non_image_upload_is_refused_with_advice(run_with_models):
    from core import CxrError
    from core.training.predict import predict_image

    store, result, _ = run_with_models
    with pytest.raises(CxrError, match="upload a PNG, JPEG or DICOM"):
        predict_image(store, result.run_id, b"%PDF-1.4 not an image")


def test_predict_page_classifies_a_data_set_image(run_with_models, monkeypatch):
    store, result, _ = run_with_models
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "5_Predict.py"), default_timeout=120).run()
    at.radio(key="predict_source").set_value("from the data set").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert 0 <= float(metrics["P(Effusion)"]) <= 1  # 'Normal' is recognised as the negative class and metrics["Call"] in ("Effusion", "Normal")
    assert len(at.get("image")) == 3  # the image, its overlay and the colour scale
    # an image of the run's own data set: its true label and the held-out fold's probability, with the caveat
    image_id = at.selectbox(key="predict_image").value
    fold, label_index, prob = store.prediction(result.run_id, image_id)
    note = next(i.value for i in at.info if i.value.startswith("True label"))
    assert f"True label: **{store.run_record(result.run_id).classes[label_index]}**" in note
    assert f"**{prob:.3f}** from fold {fold + 1}'s model" in note and "trained on it" in note


@pytest.mark.slow
def test_predict_page_loads_the_fold_models_once_and_redraws_without_predicting_again(run_with_models, monkeypatch):
    """A second image costs forward passes only; the threshold and the opacity cost no prediction at all."""
    import streamlit as st

    import core.training.predict as predict

    store, result, _ = run_with_models
    st.cache_resource.clear()
    st.cache_data.clear()
    loads, predictions = [], []
    real_load, real_predict = predict.load_ensemble, predict.predict_with
    monkeypatch.setattr(predict, "load_ensemble", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    monkeypatch.setattr(predict, "predict_with", lambda *a, **k: predictions.append(1) or real_predict(*a, **k))
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "5_Predict.py"), default_timeout=120).run()
    at.radio(key="predict_source").set_value("from the data set").run()
    images = at.selectbox(key="predict_image").options
    at.selectbox(key="predict_image").set_value(images[1]).run()
    assert not at.exception and (len(loads), len(predictions)) == (1, 2)
    at.slider(key="predict_threshold").set_value(0.9).run()
    at.slider(key="predict_opacity").set_value(0.8).run()
    assert not at.exception and (len(loads), len(predictions)) == (1, 2)
    assert {m.label: m.value for m in at.metric}["Call"] in ("Effusion", "Normal")


@pytest.mark.slow
def test_runs_page_renames_and_deletes_with_confirmation(tmp_path, monkeypatch):
    data = blob_dataset(tmp_path / "data", n_per_class=6)
    cfg = tiny_config(data, batch_size=4, max_iterations=1, folds=2, eval_every=1)
    store = Store(tmp_path / "runs")
    run_id = run_cross_validation(cfg, store=store).run_id
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "2_Runs.py"), default_timeout=120).run()
    at.text_input(key="runs_name").set_value("baseline")
    at.text_input(key="runs_tags").set_value("demo, cpu")
    next(b for b in at.button if b.label == "Save").click().run()
    assert store.run(run_id)["name"] == "baseline" and store.run(run_id)["tags"] == "demo, cpu"
    assert at.button(key="runs_delete").disabled  # not without the confirmation
    at.checkbox(key="runs_confirm_delete").check().run()
    at.button(key="runs_delete").click().run()
    assert store.list_runs().empty and store.predictions(run_id).empty and not (store.runs_dir / run_id).exists()


@pytest.mark.slow
def test_live_progress_counts_against_the_epoch_limit_too(tmp_path):
    from core.dashboard import job_progress

    data = blob_dataset(tmp_path / "data", n_per_class=6)
    store = Store(tmp_path / "runs")
    # 12 images, 2 folds -> 6 training images, batch 4 -> 1 iteration per epoch; 2 epochs end training before 50 iterations
    result = run_cross_validation(tiny_config(data, batch_size=4, max_iterations=50, max_epochs=2, folds=2, gradcam=False), store=store)
    p = job_progress(store.runs_dir, result.run_id)
    assert p["status"] == "finished" and p["total"] == 4 and p["done"] == 4 and p["fraction"] == 1.0


@pytest.mark.slow
def test_export_report_is_one_offline_file_with_tables_figures_and_escaped_names(finished_run, tmp_path):
    """A clinician gets one HTML file: it must open offline (plotly.js inlined once) and never run text a user typed."""
    from core.__main__ import main
    from core.results.export import comparison_report_html

    store, result = finished_run
    store.update_run(result.run_id, notes="<script>alert(1)</script>")
    page = comparison_report_html(store.runs_dir, [result.run_id], gallery_size=4)
    assert page.count("<script>alert(1)</script>") == 0 and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script src=" not in page and page.count("Plotly.newPlot(") == 7  # confusion, ROC, forest, calibration, decision curve, 2 curves
    assert page.count("<table>") == page.count("<div class=wide><table>") > 0  # wide tables scroll in their box, not off the page
    assert f"{100 * result.metrics['auc']:.2f}" in page  # the pooled AUC of Table 3
    assert "<img src='data:image/png;base64," in page  # Grad-CAM examples embedded, not linked
    assert "Excluded files" not in page  # the blob data set has none
    out = tmp_path / "report.html"
    assert main(["export", result.run_id, "--out", str(out), "--runs-dir", str(store.runs_dir), "--cams", "0"]) == 0
    assert out.read_text().startswith("<!doctype html>") and "<img src=" not in out.read_text()
    assert main(["export", "no-such-run", "--out", str(out), "--runs-dir", str(store.runs_dir)]) == 2


def test_export_page_offers_the_report_for_download(finished_run, monkeypatch):
    store, result = finished_run
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "6_Export.py"), default_timeout=120).run()
    assert not at.exception
    at.button(key="export_build").click().run()
    assert not at.exception
    assert "Report ready" in at.success[0].value and "1 run(s)" in at.success[0].value


def test_a_confusion_matrix_cell_opens_its_images_in_the_gallery(finished_run, monkeypatch):
    """The TN button (same as clicking the TN cell) switches to the Grad-CAM page, which shows only that run's TN images."""
    store, result = finished_run
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    monkeypatch.setenv("CXR_DEMO_DIR", str(store.runs_dir / "no-demo"))
    at = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=120)
    at.switch_page("pages/2_Runs.py").run()
    assert not at.exception
    at.button(key="runs_open_TN").click().run()
    assert not at.exception
    assert at.title[0].value == "Grad-CAM gallery"
    assert at.selectbox(key="cam_run").value == result.run_id
    assert at.multiselect(key="cam_outcomes").value == ["TN"]
    cams = store.cams(result.run_id)
    n_tn = int(((cams["target"] == "predicted") & (cams["outcome"] == "TN")).sum())
    assert len(at.get("image")) == 2 * min(12, n_tn) + 1


@pytest.mark.slow
def test_gallery_shows_the_same_images_across_runs_side_by_side(finished_run, monkeypatch):
    store, result = finished_run
    data = store.run(result.run_id)["config"]
    import json

    other = run_cross_validation(tiny_config(json.loads(data)["data"], max_iterations=2), store=store, name="other run")
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file(str(PAGES / "4_Grad-CAM.py"), default_timeout=120)
    at.session_state["cam_request"] = {"run": result.run_id, "outcomes": ["TP", "FP", "FN", "TN"], "others": [other.run_id]}
    at.run()
    assert not at.exception
    shown = min(12, int((store.cams(result.run_id)["target"] == "predicted").sum()))
    # each row: original, this run's overlay, the other run's overlay (both runs kept every image: 3 folds of 8 < gradcam_max)
    assert len(at.get("image")) == 3 * shown + 1
    captions = [m.value for m in at.markdown]
    assert "**other run**" in captions and "**tiny run**" in captions


@pytest.mark.slow
def test_compare_overlays_training_curves_of_every_run(tmp_path):
    from core.dashboard import comparison
    from core.results.figures import training_curves_overlay

    data = blob_dataset(tmp_path / "data", n_per_class=9)
    store = Store(tmp_path / "runs")
    ids = [run_cross_validation(tiny_config(data, max_iterations=n, gradcam=False), store=store, name=f"{n} its").run_id for n in (2, 4)]
    c = comparison(store.runs_dir, ids)
    fig = training_curves_overlay(c["training"], metric="loss")
    assert [t.name for t in fig.data] == ["2 its (mean of folds, smoothed)", "4 its (mean of folds, smoothed)"]
    assert [len(t.x) for t in fig.data] == [2, 4]  # one point per iteration, folds averaged
    assert fig.layout.xaxis.title.text == "iteration" and fig.layout.yaxis.title.text == "cross-entropy loss"


def test_data_page_shows_the_leakage_audit_and_the_cohort_flow(tmp_path, monkeypatch):
    """A user-supplied split that puts a patient in two folds is flagged before anyone trains on it."""
    import json

    import numpy as np
    import pandas as pd

    from conftest import write_image

    root = tmp_path / "data"
    rows = []
    for i in range(12):
        write_image(root / f"img{i}.png", np.full((32, 32), 10 * i, np.uint8))
        rows.append({"path": f"img{i}.png", "label": "Effusion" if i % 2 else "Normal", "group": f"p{i // 4}", "fold": 1 + i % 2})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    (root / "cohort.flow.json").write_text(json.dumps({"steps": [
        {"name": "images in the labels", "n_images": 30, "n_studies": 30, "n_patients": 9, "n_removed": 0, "reason": ""},
        {"name": "view", "n_images": 12, "n_studies": 12, "n_patients": 3, "n_removed": 18, "reason": "not PA or AP"}]}))
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CXR_DATA_ROOTS", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "0_Data.py"), default_timeout=120).run()
    at.radio(key="data_kind").set_value("csv").run()
    at.text_input(key="data_path").set_value(str(root / "cohort.csv")).run()
    at.text_input(key="data_foldcol").set_value("fold").run()
    assert not at.exception
    assert "Leakage audit: 3 of 3 patients (12 images) have images in more than one fold" in at.error[0].value
    flow = next(df.value for df in at.dataframe if "step" in df.value.columns)
    assert flow["removed"].tolist() == [0, 18] and flow["reason"].tolist()[1] == "not PA or AP"
    at.number_input(key="data_folds").set_value(2)
    at.text_input(key="data_foldcol").set_value("").run()  # the tool's own grouped folds: clean
    assert "Leakage audit: no patient in two folds (3 patients)" in at.success[0].value


def test_forest_plot_shows_each_folds_auc_with_its_delong_interval(finished_run):
    from core.dashboard import run_detail
    from core.results.figures import forest
    from core.results.stats import auc_delong

    store, result = finished_run
    folds = run_detail(store.runs_dir, result.run_id)["folds"]
    preds = store.predictions(result.run_id)
    first = preds[preds["fold"] == 0]
    y = first["label_index"].to_numpy() == 0  # 'Effusion' sorts first and is the positive class
    expected = auc_delong(y, first["prob_positive"].to_numpy(dtype=float))
    assert folds.loc[0, "auc_ci_low"] == pytest.approx(expected.low) and folds.loc[0, "auc_ci_high"] == pytest.approx(expected.high)
    fig = forest(folds, pooled=0.9, mean=0.95)
    assert fig.data[0].error_x.array is not None and fig.data[0].name == "fold AUC (95 % DeLong CI)"
    # the reference lines are named in the legend with their values (annotations ran off the plot near AUC 1)
    assert [t.name for t in fig.data[1:]] == ["pooled AUC 90.00 %", "mean of fold AUCs 95.00 %"]
    assert sorted(shape.x0 for shape in fig.layout.shapes) == [0.9, 0.95] and not fig.layout.annotations


def test_confusion_matrix_names_its_summaries_and_fills_its_axes():
    """MATLAB's layout with the rates a clinician reads: columns give specificity and sensitivity, rows NPV and PPV."""
    from core.results.figures import confusion_matlab

    fig = confusion_matlab(tp=143, fn=57, fp=16, tn=184, positive="Effusion", negative="Normal")
    assert list(fig.layout.xaxis.ticktext) == ["Normal<br>92.0 % correct<br>(specificity)", "Effusion<br>71.5 % correct<br>(sensitivity)"]
    assert [a.text for a in fig.layout.annotations] == ["76.3 %<br>(NPV)", "89.9 %<br>(PPV)"]
    # fixed to the four cells: autorange padded for the clickable markers and squeezed the cells into a strip
    assert list(fig.layout.xaxis.range) == [-0.5, 1.5] and list(fig.layout.yaxis.range) == [1.5, -0.5]
    assert sorted(fig.data[1].customdata) == ["FN", "FP", "TN", "TP"]


def test_gallery_query_filters_sorts_and_limits_in_duckdb(finished_run):
    """The gallery asks DuckDB for just the heat maps it shows: the chosen outcomes and fold, most confident first."""
    from core.dashboard import gallery

    store, result = finished_run
    items = gallery(store.runs_dir, result.run_id, outcomes=["TP", "TN"], fold=1, limit=3, display=32)
    cams = store.cams(result.run_id)
    pool = cams[(cams["target"] == "predicted") & cams["outcome"].isin(["TP", "TN"]) & (cams["fold"] == 1)]
    assert len(items) == min(3, len(pool)) and {i["fold"] for i in items} == {1} and {i["outcome"] for i in items} <= {"TP", "TN"}
    confidence = [abs(i["prob_positive"] - 0.5) for i in items]
    assert confidence == sorted(confidence, reverse=True)
    assert confidence[0] == pytest.approx((pool["prob_positive"] - 0.5).abs().max())
    assert gallery(store.runs_dir, result.run_id, outcomes=[]) == []
