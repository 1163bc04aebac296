"""The dashboard in a real headless Chromium against a running server: every page without exception text, and
the demo path a new user walks (Home -> Train -> Runs -> Compare -> Grad-CAM -> Predict) step by step.

Skips with a reason where Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.training.engine import run_cross_validation
from core.results.store import Store

from conftest import blob_dataset, tiny_config

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# every numbered page file by its URL ("4_Grad-CAM.py" -> "Grad-CAM"), so a new page cannot be left out; "" is the home page
PAGES = [""] + [f.stem.split("_", 1)[1] for f in sorted((Path(__file__).resolve().parent.parent / "pages").glob("[0-9]*_*.py"))]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-dev.txt)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")


_SERVER_RUNS: dict[str, Path] = {}  # server URL -> the runs folder it reads


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    data = blob_dataset(root / "data", n_per_class=9)
    cfg = tiny_config(data, batch_size=8, max_iterations=2, folds=3, eval_every=1)
    run_cross_validation(cfg, store=Store(root / "runs"), name="browser run")
    port = _free_port()
    env = {**os.environ, "CXR_RUNS_DIR": str(root / "runs"), "CXR_DEMO_DIR": str(root / "demo"), "CXR_DATA_ROOTS": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    _SERVER_RUNS[f"http://127.0.0.1:{port}"] = root / "runs"
    yield f"http://127.0.0.1:{port}", data
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
def test_every_page_renders_without_exceptions(server):
    server, _ = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                                      "--disable-component-update"])
        page = browser.new_page()
        # A deep link first, on a server no session has used yet: Streamlit still assumes the legacy pages/ folder
        # then (pages/__init__.py reruns such a visit through app.py's navigation); the home page last.
        for name in [*PAGES[1:], ""]:
            page.goto(f"{server}/{name}")
            page.wait_for_selector("h1", timeout=60_000)
            page.wait_for_timeout(3000)  # let the script finish and charts draw
            text = page.inner_text("body")
            assert "Traceback" not in text and "Exception" not in text and "Error:" not in text, f"page {name or 'home'}: {text[:500]}"
            assert page.locator("[data-testid='stException']").count() == 0, f"page {name or 'home'}"
            nav = page.inner_text("[data-testid='stSidebarNav']").split("\n")
            assert "Home" in nav and "app" not in nav and all(n.replace("_", " ") in nav for n in PAGES if n), nav
        browser.close()


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                              "--disable-component-update"])


def _open(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
    _settle(page)


def _settle(page) -> None:
    """Wait until Streamlit has finished running the script (its status widget says "Running..." until then)."""
    page.wait_for_timeout(500)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=120_000)
    page.wait_for_timeout(1000)


def _shot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its own container, so a full-page screenshot shows one screen; a tall
    viewport for the moment of the screenshot shows all of it."""
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": 3200})
    page.wait_for_timeout(1500)
    page.screenshot(path=path)
    page.set_viewport_size(size)


def _no_exception(page, step: str) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, f"{step}: {page.inner_text('body')[:800]}"


def _choose(page, widget, option: str) -> None:
    """Pick `option` (a substring of its label) in a Streamlit selectbox or multiselect."""
    widget.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()
    page.keyboard.press("Escape")  # a multiselect's list stays open over the page
    _settle(page)


@pytest.mark.slow
def test_the_demo_path_from_home_to_predict(server, tmp_path):
    """A quick run started on Train is read on Runs (threshold moved), compared, explained and used on Predict.

    Screenshots of every step go to $CXR_SHOTS_DIR (or the test's temporary folder) for a person to look at.
    """
    server, data = server
    shots = Path(os.environ.get("CXR_SHOTS_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})

        try:
            # Home: the runs table, then the sidebar to Train
            _open(page, server, "cxr-transfer")
            _shot(page, shots / "1-home.png")
            page.locator("[data-testid='stSidebarNav']").get_by_text("Train", exact=True).click()
            page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
            _settle(page)

            # Train: the quick preset on the tiny data set, 2 iterations x 3 folds, named automatically
            page.get_by_label("Data set", exact=True).fill(str(data))
            page.get_by_label("Max iterations", exact=True).fill("2")
            page.get_by_text("Cross-validation", exact=True).click()
            page.get_by_label("Folds", exact=True).fill("3")
            page.get_by_role("button", name="Start run").click()
            finished = page.get_by_text(re.compile(r"^Run \S+: finished$"))
            finished.wait_for(timeout=240_000)
            run_id = finished.inner_text().split()[1].rstrip(":")
            _settle(page)
            _shot(page, shots / "2-train.png")
            _no_exception(page, "Train")
            name = "quick · iters 2 · folds 3"  # core.config.auto_name: the preset and what was changed

            # Runs: the new run is listed by its name; the threshold at 0 calls every image positive
            _open(page, f"{server}/Runs", "Runs")
            _choose(page, page.get_by_label("Run", exact=True), name)
            assert "At 0.50: Pooled confusion matrix" in page.inner_text("body")
            page.get_by_role("slider").first.focus()
            page.keyboard.press("Home")
            page.get_by_text(re.compile("At 0.00: Pooled confusion matrix")).wait_for(timeout=30_000)
            _settle(page)
            text = page.inner_text("body")
            assert "accuracy 50.0 %" in text and "100.0 % correct" in text and "0.0 % correct" in text, text[:2000]
            assert "At 0.00 (95 % Wilson intervals)" in text
            _shot(page, shots / "3-runs.png")
            _no_exception(page, "Runs")

            # Compare: the new run against the fixture's run; both named in Table 3's figures
            _open(page, f"{server}/Compare", "Compare runs")
            runs_picker = page.get_by_label("Runs (the first is the reference row)", exact=True)
            _choose(page, runs_picker, name)
            _choose(page, runs_picker, "browser run")
            page.get_by_role("heading", name="Table 3").wait_for(timeout=60_000)
            _settle(page)
            text = page.inner_text("body")
            assert name in text and "browser run" in text and "Settings that differ" in text, text[:2000]
            _shot(page, shots / "4-compare.png")
            _no_exception(page, "Compare")

            # Grad-CAM: the new run's heat maps beside the originals, with the colour scale
            _open(page, f"{server}/Grad-CAM", "Grad-CAM gallery")
            _choose(page, page.get_by_label("Run", exact=True), name)
            images = page.locator("[data-testid='stImage']")
            assert images.count() >= 3, page.inner_text("body")[:2000]  # the colour scale, an original and its overlay
            assert "each map is scaled" in page.inner_text("body").lower()
            _shot(page, shots / "5-gradcam.png")
            _no_exception(page, "Grad-CAM")

            # Predict: the run just trained (it kept its fold models), on an image of its own data set
            _open(page, f"{server}/Predict", "Predict")
            _choose(page, page.get_by_label("Run", exact=True), name)
            page.get_by_text("from the data set", exact=True).click()
            page.get_by_text(re.compile("True label:")).wait_for(timeout=120_000)
            _settle(page)
            text = page.inner_text("body")
            assert "Out of fold" in text and "never saw this image" in text and "P(Effusion)" in text, text[:2000]
            _shot(page, shots / "6-predict.png")
            _no_exception(page, "Predict")
        except Exception:
            _shot(page, shots / "failed.png")  # what the page showed when a step failed
            raise
        browser.close()
    assert run_id


@pytest.mark.slow
def test_a_scripted_reader_completes_an_unaided_and_an_aided_study(server, tmp_path):
    """A reader names themselves, reads 10 cases unaided (one at a time, no image id shown), then the same 10 aided
    (the model's probability and heat map shown); the results appear on the page and in `reader-report --format json`."""
    import json

    from core.__main__ import main
    from core.review.studies import create_study

    server, _ = server
    shots = Path(os.environ.get("CXR_SHOTS_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    store = _server_store(server)
    run_id = store.query("SELECT run_id FROM runs WHERE name = 'browser run'")["run_id"].iloc[0]
    study_id = create_study(store, run_id, n_images=10, seed=1, name="browser reader study")
    image_ids = set(store.study_cases(study_id)["image_id"])
    with playwright.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        _open(page, f"{server}/Reader_study", "Reader study")
        _choose(page, page.get_by_label("Study", exact=True).locator(".."), "browser reader study")
        page.get_by_label("Reader (name or initials)").fill("Dr Script")
        page.keyboard.press("Enter")
        _settle(page)
        for session in ("Unaided", "Aided"):
            page.get_by_role("radiogroup", name="Session").get_by_text(session, exact=True).click()
            _settle(page)
            for k in range(1, 11):
                body = page.inner_text("body")
                assert f"Case {k} of 10" in body, body[:600]
                assert not any(i in body for i in image_ids)  # no file name, path or id in front of a reader
                if session == "Aided":
                    assert "Model: P(Effusion)" in body
                if k == 1:
                    _shot(page, shots / f"reader-{session.lower()}.png")
                call = "Effusion" if k % 2 else "Normal"
                page.get_by_role("radiogroup", name="Your call").get_by_text(call, exact=True).click()
                page.get_by_role("button", name="Save and next").click()
                _settle(page)
                _no_exception(page, f"{session} case {k}")
            assert f"{session} session complete: 10 of 10 cases read" in page.inner_text("body")
        body = page.inner_text("body")
        # the tables draw on a canvas (no text to read here): their headings and the pooled lines are text
        assert "Aided against unaided" in body and "Pooled unaided (1 reader, 10 reads)" in body and "Pooled aided" in body
        _shot(page, shots / "reader-results.png")
        browser.close()
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["reader-report", study_id, "--format", "json", "--runs-dir", str(store.runs_dir)]) == 0
    report = json.loads(buffer.getvalue())
    assert [(r["reader"], r["session"], r["n_read"]) for r in report["readers"]] == [("Dr Script", "unaided", 10), ("Dr Script", "aided", 10)]
    assert report["aided_vs_unaided"][0]["n"] == 10 and report["teaching_reads_excluded"] == 0


@pytest.mark.slow
def test_a_reviewer_tags_a_miss_in_the_browser_and_it_is_stored(server, tmp_path):
    """The Review page as a reviewer uses it: name, tag a case with a note, save; the store holds it with the name."""
    server, _ = server
    shots = Path(os.environ.get("CXR_SHOTS_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    store = _server_store(server)
    run_id = store.query("SELECT run_id FROM runs WHERE name = 'browser run'")["run_id"].iloc[0]
    with playwright.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        _open(page, f"{server}/Review", "Review queue")
        _choose(page, page.get_by_label("Run", exact=True).locator(".."), "browser run")
        _choose(page, page.get_by_label("Cases", exact=True).locator(".."), "least confident")  # every run has those
        page.get_by_label("Reviewer (name or initials, once per session)").fill("Dr Browser")
        page.keyboard.press("Enter")
        _settle(page)
        _no_exception(page, "review queue")
        form = page.locator("[data-testid='stForm']").first
        form.get_by_label("Tag", exact=True).locator("..").click()  # no Escape after it: it clears a selectbox with no default
        page.get_by_role("option", name="support device").click()
        form.get_by_label("Note (optional)").fill("line over the left base")
        form.get_by_role("button", name="Save tag").click()
        _settle(page)
        _no_exception(page, "saving a tag")
        body = page.inner_text("body")
        assert "Saved: support device" in body and "support device 1" in body  # counted at once
        _shot(page, shots / "review.png")
        browser.close()
    tags = store.tags(run_id)
    assert (tags["reviewer"] == "Dr Browser").any()
    mine = tags[tags["reviewer"] == "Dr Browser"].iloc[0]
    assert mine["tag"] == "support device" and mine["note"] == "line over the left base"


def _server_store(server_url: str) -> Store:
    """The store the module's server reads (its runs folder sits beside the fixture's data)."""
    return Store(_SERVER_RUNS[server_url])
