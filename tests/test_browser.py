"""Every page in a real headless Chromium against a running server: no exception text anywhere.

Skips with a reason where Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
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
    env = {**os.environ, "CXR_RUNS_DIR": str(root / "runs"), "CXR_DEMO_DIR": str(root / "demo")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
                             "--server.address", "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.slow
def test_every_page_renders_without_exceptions(server):
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
            assert "Home" in nav and "app" not in nav and all(n in nav for n in PAGES if n), nav
        browser.close()
