"""`python -m core weights download`: ImageNet weights into torch hub's cache, checksum checked, one clear line without network.

No weights can be downloaded on the machines these tests run on, so a local HTTP server plays the mirror.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def mirror(tmp_path):
    """A localhost HTTP server for the files under tmp_path/served; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()


def weights(*args: str, torch_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_HOME": str(torch_home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "core", "weights", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_a_download_lands_in_torch_hubs_cache_with_its_checksum_checked(tmp_path, mirror):
    base, served = mirror
    content = os.urandom(4096)
    name = f"resnet18-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    (served / name).write_bytes(content)
    done = weights("download", "resnet18", "--url", f"{base}/{name}", "--no-progress", torch_home=tmp_path / "th")
    assert done.returncode == 0, done.stderr
    cached = tmp_path / "th" / "hub" / "checkpoints" / name
    assert done.stdout.strip() == str(cached) and cached.read_bytes() == content


@pytest.mark.slow
def test_a_file_that_does_not_match_its_checksum_is_refused_and_not_kept(tmp_path, mirror):
    base, served = mirror
    (served / "resnet18-deadbeef.pth").write_bytes(b"not the weights")
    done = weights("download", "resnet18", "--url", f"{base}/resnet18-deadbeef.pth", "--no-progress", torch_home=tmp_path / "th")
    assert done.returncode == 2 and "does not match its checksum" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "th" / "hub" / "checkpoints").glob("*"))


@pytest.mark.slow
def test_without_network_one_line_says_how_to_use_a_local_file(tmp_path):
    done = weights("download", "resnet18", "--url", "http://127.0.0.1:9/resnet18-f37072fd.pth", "--no-progress", torch_home=tmp_path / "th")
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download") and "--set weights=/path/to/resnet18-f37072fd.pth" in last


def test_torchvisions_own_url_fills_the_file_that_weights_auto_looks_for(tmp_path, monkeypatch):
    """Without --url the file comes from torchvision's weights API and lands where build_model(weights='auto') finds it."""
    import torch
    import torchvision.models as tvm

    from core.training.models import download_imagenet, imagenet_available, imagenet_cache_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert not imagenet_available("resnet18")
    file = download_imagenet("resnet18", progress=False)
    assert file == imagenet_cache_file("resnet18") and imagenet_available("resnet18")
    url = tvm.get_model_weights("resnet18").DEFAULT.url
    assert fetched == [(url, Path(url).name.split("-")[1].split(".")[0])]  # the checksum in torchvision's file name
    assert download_imagenet("resnet18", progress=False) == file and len(fetched) == 1  # cached: not fetched again
