"""Security: weights never run code, typed paths stay under the data roots, demo mode only shows, identifiers never leak."""

from __future__ import annotations

import io
import os
import pickle
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import CxrError
from core.training.engine import run_cross_validation
from core.safety import check_data_path, data_roots
from core.results.store import Store

from conftest import blob_dataset, tiny_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "pages"


class _Payload:
    """Unpickling this calls open(marker, 'w'): a file appears if the pickle's code ever runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# -- weights never execute code ------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 2"])
def test_a_weights_file_with_a_pickled_payload_is_refused_and_never_runs(tmp_path, writer):
    from core.training.models import build_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    state = {"conv1.weight": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, evil)
    else:
        evil.write_bytes(pickle.dumps(state, protocol=2))
    with pytest.raises(CxrError, match="cannot read weights file .*not a plain state dict.*never loaded, because loading them could run code"):
        build_model("resnet18", 2, str(evil))
    assert not marker.exists()
    # the payload is real: an unsafe loader would have run it
    torch.load(evil, weights_only=False) if writer == "torch.save" else pickle.loads(evil.read_bytes())
    assert marker.exists()


@pytest.mark.slow
def test_a_fold_model_with_a_pickled_payload_is_refused_by_predict(tmp_path):
    from core.training.predict import predict_image

    data = blob_dataset(tmp_path / "d", n_per_class=6)
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(data, folds=2, max_iterations=1, gradcam=False, save_models=True), store=store)
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": _Payload(marker)}, store.run_dir(result.run_id) / "fold_1.pt")  # someone swapped a file
    image = sorted(data.rglob("*.png"))[0].read_bytes()
    with pytest.raises(CxrError, match="cannot load fold_1.pt of run"):
        predict_image(store, result.run_id, image)
    assert not marker.exists()


def test_every_torch_load_in_the_code_is_weights_only():
    calls = []
    for path in [*ROOT.joinpath("core").rglob("*.py"), *PAGES.glob("*.py"), ROOT / "app.py"]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(|load_state_dict_from_url\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):  # the call's text up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start(): end + 1]))
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
    assert len(calls) >= 3  # models (file + hub) and predict
    assert all("weights_only=True" in call for _, call in calls), calls


# -- data roots ------------------------------------------------------------------------------------


def test_a_path_under_a_data_root_is_accepted(tmp_path):
    (tmp_path / "data" / "set").mkdir(parents=True)
    assert check_data_path(tmp_path / "data" / "set", [tmp_path / "data"]) == (tmp_path / "data" / "set").resolve()
    assert check_data_path(tmp_path / "data", [tmp_path / "data"]) == (tmp_path / "data").resolve()


@pytest.mark.parametrize("typed", ["/etc", "{tmp}/data/../secrets", "{tmp}/data/link-out/x.png", "{tmp}/database"])
def test_paths_outside_the_data_roots_are_refused_after_resolving_symlinks_and_dots(tmp_path, typed):
    (tmp_path / "data").mkdir()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "data" / "link-out").symlink_to(tmp_path / "secrets")
    with pytest.raises(CxrError, match=rf"is outside the data folders this dashboard may read \({re.escape(str(tmp_path / 'data'))}\); .*CXR_DATA_ROOTS"):
        check_data_path(typed.format(tmp=tmp_path), [tmp_path / "data"])


def test_the_data_roots_come_from_the_environment_or_default_to_data_and_the_demo_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_DATA_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert data_roots() == [tmp_path / "a", tmp_path / "b"]
    monkeypatch.delenv("CXR_DATA_ROOTS")
    monkeypatch.setenv("CXR_DEMO_DIR", str(tmp_path / "demo"))
    assert data_roots() == [Path("data"), tmp_path / "demo"]


def test_the_data_page_refuses_a_typed_path_outside_the_roots(tmp_path, monkeypatch):
    outside = blob_dataset(tmp_path / "outside", n_per_class=4)
    monkeypatch.setenv("CXR_DATA_ROOTS", str(tmp_path / "allowed"))
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / "0_Data.py"), default_timeout=60).run()
    at.radio(key="data_kind").set_value("folders").run()
    at.text_input(key="data_path").set_value(str(outside)).run()
    assert not at.exception and "is outside the data folders this dashboard may read" in at.error[0].value
    assert str(tmp_path / "allowed") in at.error[0].value and not at.metric  # nothing was read


def test_the_train_page_starts_a_named_run_that_keeps_its_fold_models(tmp_path, monkeypatch):
    """Train -> Predict: a run started here saves its fold models unless unticked, and carries the name typed."""
    started = []
    monkeypatch.setattr("core.jobs.launch.start_run", lambda cfg, **kw: started.append((cfg, kw)) or ("r", 1))
    monkeypatch.setenv("CXR_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "d").mkdir()
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert any("save_models is on" in c.value and "MB" in c.value for c in at.caption)  # the disk cost, before starting
    at.text_input(key="train_data").set_value(str(tmp_path / "d"))
    at.text_input(key="train_name").set_value("  baseline 64 px ")
    at.button[0].click().run()
    cfg, kw = started[0]
    assert cfg.save_models and kw["name"] == "baseline 64 px" and kw["preset"] == "quick"
    at.checkbox(key="train_quick_save_models").uncheck()
    at.button[0].click().run()
    assert started[1][0].save_models is False


@pytest.mark.parametrize("field", ["train_data", "train_quick_weights"])
def test_the_train_page_refuses_a_data_or_weights_path_outside_the_roots(tmp_path, monkeypatch, field):
    started = []
    monkeypatch.setattr("core.jobs.launch.start_run", lambda cfg, **kw: started.append(cfg) or ("r", 1))
    monkeypatch.setenv("CXR_DATA_ROOTS", str(tmp_path / "allowed"))
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "allowed").mkdir()
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    at.text_input(key="train_data").set_value(str(tmp_path / "allowed"))
    at.text_input(key=field).set_value("/etc/passwd")
    at.button[0].click().run()
    assert not at.exception and "/etc/passwd is outside the data folders" in at.error[0].value
    assert started == [] and "train_job" not in at.session_state


# -- read-only demo mode ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """A runs folder with one finished run and one cancelled run, and a small demo data set, served in demo mode."""
    from core.data.phantom import make_demo_dataset

    root = tmp_path_factory.mktemp("demo-mode")
    make_demo_dataset(root / "demo", n_per_class=4, size=64)
    store = Store(root / "runs")
    run_cross_validation(tiny_config(root / "demo", folds=2, max_iterations=1, gradcam=False, image_size=32), store=store, name="shown")
    store.create_run("stopped", status="cancelled", folds=3, name="stopped run")
    return root


@pytest.fixture
def demo_env(demo_server, monkeypatch):
    monkeypatch.setenv("CXR_DEMO_MODE", "1")
    monkeypatch.setenv("CXR_RUNS_DIR", str(demo_server / "runs"))
    monkeypatch.setenv("CXR_DEMO_DIR", str(demo_server / "demo"))
    return demo_server


@pytest.mark.slow
def test_demo_mode_train_page_has_no_start_buttons(demo_env):
    at = AppTest.from_file(str(PAGES / "1_Train.py"), default_timeout=60).run()
    assert not at.exception and "Read-only demo mode" in at.info[0].value
    assert len(at.button) == 0 and len(at.text_input) == 0


def test_demo_mode_runs_page_shows_results_but_no_rename_delete_or_resume(demo_env):
    at = AppTest.from_file(str(PAGES / "2_Runs.py"), default_timeout=120).run()
    assert not at.exception
    assert any(m.label == "AUC (pooled)" for m in at.metric)  # the results are there
    labels = [e.label for e in at.expander]
    assert "Unfinished runs (1)" in labels and "Manage this run" not in labels
    keys = {b.key for b in at.button}
    assert "runs_delete" not in keys and "runs_resume_stopped" not in keys and not any(b.label == "Save" for b in at.button)


def test_demo_mode_data_page_shows_only_the_demo_data_set(demo_env):
    at = AppTest.from_file(str(PAGES / "0_Data.py"), default_timeout=120).run()
    assert not at.exception
    assert len(at.text_input) == 0 and not any(r.key == "data_kind" for r in at.radio)  # no path can be typed
    assert {m.label: m.value for m in at.metric}["Usable images"] == "8"


def test_demo_mode_home_page_offers_no_run_and_no_data_creation(demo_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception and any("Read-only demo mode" in i.value for i in at.info)
    assert {b.key for b in at.button}.isdisjoint({"home_quick_run", "home_make_demo"})


def test_demo_mode_export_still_works(demo_env):
    at = AppTest.from_file(str(PAGES / "6_Export.py"), default_timeout=120).run()
    at.button(key="export_build").click().run()
    assert not at.exception and "Report ready" in at.success[0].value


def test_demo_mode_refuses_writes_in_core_too(demo_env):
    """Behind the hidden buttons: a forged request cannot start, resume, rename or delete anything either."""
    from core.config import preset
    from core.dashboard import delete_run, make_demo, update_run_labels
    from core.jobs.launch import start_resume, start_run

    runs = demo_env / "runs"
    for attempt in (lambda: start_run(preset("quick"), runs_dir=runs), lambda: start_resume("stopped", runs_dir=runs),
                    lambda: delete_run(runs, "stopped"), lambda: update_run_labels(runs, "stopped", name="x", tags="", notes=""),
                    lambda: make_demo(demo_env / "other")):
        with pytest.raises(CxrError, match="is off in read-only demo mode"):
            attempt()
    assert Store(runs).run("stopped")["status"] == "cancelled" and not (runs / "jobs").exists()


def test_demo_mode_can_be_asked_for_on_the_streamlit_command_line(monkeypatch):
    from core.safety import demo_mode

    monkeypatch.delenv("CXR_DEMO_MODE", raising=False)
    monkeypatch.setattr("sys.argv", ["app.py"])
    assert not demo_mode()
    monkeypatch.setattr("sys.argv", ["app.py", "--demo"])  # streamlit run app.py -- --demo
    assert demo_mode()


# -- no patient identifiers in logs or the store ------------------------------------------------------


@pytest.mark.slow
def test_dicom_identifiers_never_reach_the_log_or_the_store(tmp_path, caplog):
    import numpy as np

    from core.__main__ import main
    from test_dicom import PATIENT, make_dicom

    rng = np.random.default_rng(0)
    for label, shift in (("Normal", 0), ("Effusion", 90)):
        for i in range(4):
            pixels = (rng.integers(20, 90, (40, 40)) + np.r_[np.zeros((27, 40)), np.full((13, 40), shift)]).astype(np.uint8)
            (tmp_path / "d" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "d" / label / f"{i}.dcm").write_bytes(make_dicom(pixels))
    broken = make_dicom(np.zeros((40, 40), np.uint8))
    (tmp_path / "d" / "Normal" / "broken.dcm").write_bytes(broken[: len(broken) - 900])  # identifiers intact, pixels cut
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["run", "--data", str(tmp_path / "d"), "--runs-dir", str(tmp_path / "runs"), "--set", "weights=none",
                     "--set", "image_size=32", "--set", "folds=2", "--set", "batch_size=4", "--set", "max_iterations=1"])
    assert code == 0, err.getvalue()
    store = Store(tmp_path / "runs")
    run = store.run(out.getvalue().strip())
    images = store.images(run["dataset_id"])
    assert images.set_index("image_id").loc["Normal/broken.dcm", "excluded_reason"] != ""  # excluded, with its reason
    stored = "".join(store.query(f"SELECT * FROM {t}").to_csv() for t in ("runs", "datasets", "images", "folds", "predictions", "cams"))
    for value in PATIENT.values():
        assert value not in err.getvalue() and value not in caplog.text and value not in stored, value
