"""The home page lists what the store holds (AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.results.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CXR_DEMO_DIR", str(tmp_path / "demo"))
    return tmp_path


def test_home_without_runs_or_demo_data_offers_to_create_it(dirs):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
    assert at.button(key="home_make_demo")


def test_home_lists_a_stored_run(dirs):
    store = Store(dirs / "runs")
    store.create_run("20260101-000000-abcdef", status="finished", preset="quick", synthetic=True, n_images=40, folds=5,
                     auc=0.9123, accuracy=0.85, sensitivity=0.8, specificity=0.9, train_seconds=12.5, weights_used="none")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    table: pd.DataFrame = at.dataframe[0].value
    assert table["run"].tolist() == ["20260101-000000-abcdef"]
    assert table["AUC % (pooled)"].tolist() == [91.23] and table["data"].tolist() == ["synthetic demo"]


def test_home_says_whether_a_gpu_and_imagenet_weights_are_available(dirs, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(dirs / "torch_home"))  # an empty hub cache
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("Device:" in m.value for m in at.markdown)
    assert any("ImageNet weights are not available offline" in w.value and "resnet50" in w.value for w in at.warning)


def test_home_starts_a_quick_demo_run_in_the_background(dirs, monkeypatch):
    from core.data.phantom import make_demo_dataset

    make_demo_dataset(dirs / "demo", n_per_class=4, size=64)
    started = []
    monkeypatch.setattr("core.jobs.launch.start_run", lambda cfg, **kw: (started.append((cfg, kw)) or ("r-123", 1)))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key="home_quick_run").click().run()
    assert not at.exception and at.session_state["train_job"] == "r-123"
    cfg, kw = started[0]
    assert cfg.data == str(dirs / "demo") and kw["preset"] == "quick"
    assert cfg.save_models  # so that Predict can use the run as soon as it has finished


def test_the_navigation_lists_every_page_file_once():
    """The pages are declared (st.navigation), so a new file in pages/ would otherwise be silently unreachable."""
    import re

    root = Path(APP).parent
    declared = re.findall(r'st\.Page\("(pages/[^"]+\.py)"', (root / "pages" / "__init__.py").read_text())
    assert sorted(declared) == sorted(f"pages/{p.name}" for p in (root / "pages").glob("*.py") if p.name != "__init__.py")
    assert len(declared) == len(set(declared))


def test_the_home_page_is_the_default_and_pages_open_by_their_files(dirs):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and at.title[0].value == "cxr-transfer"  # the home page is the default
    at.switch_page("pages/2_Runs.py").run()
    assert not at.exception and at.title[0].value == "Runs"


def test_home_offers_to_download_missing_imagenet_weights_and_says_why_it_failed(dirs, monkeypatch):
    """The button fetches the quick and paper presets' backbones; without network the error says what to do instead."""
    from core import CxrError

    monkeypatch.setenv("TORCH_HOME", str(dirs / "torch_home"))  # an empty hub cache
    asked = []

    def offline(name):
        asked.append(name)
        raise CxrError(f"cannot download {name}: no network. Without internet, copy the file ...")

    monkeypatch.setattr("core.dashboard.download_imagenet_weights", offline)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.button(key="home_weights").click().run()
    assert not at.exception and asked == ["resnet18"]  # stops at the first failure
    assert any("Without internet" in e.value for e in at.error)
