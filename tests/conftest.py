"""Shared fixtures: tiny data sets made on the fly and a tiny configuration that trains in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig

os.environ.setdefault("OMP_NUM_THREADS", "2")


def write_image(path: Path, pixels: np.ndarray, **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_kw)
    return path


def blob_dataset(root: Path, *, n_per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """Two learnable classes in class folders: 'Effusion' images are brighter at the bottom."""
    rng = np.random.default_rng(seed)
    for label in ("Normal", "Effusion"):
        for i in range(n_per_class):
            img = rng.integers(20, 90, (size, size)).astype(np.uint8)
            if label == "Effusion":
                img[size * 2 // 3 :] += 100
            write_image(root / label / f"{label.lower()}_{i:03d}.png", img)
    return root


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    return blob_dataset(tmp_path / "blobs")


def tiny_config(data: str | Path = "", **changes) -> RunConfig:
    """Everything small: 32 px, ResNet-18 from scratch, 3 folds of a few iterations; `changes` override.

    fp32, not auto: auto means bf16 on CPUs with bf16 instructions, and tests must compute the same on every CPU.
    """
    base = RunConfig(
        backbone="resnet18", weights="none", image_size=32, batch_size=8, max_iterations=4,
        folds=3, eval_every=2, optimizer="adam", learning_rate=1e-3, head_lr_factor=1.0, device="cpu", data=str(data),
        precision="fp32",
    )
    return base.replace(**changes)


def ctrl_c_at_fold(monkeypatch: pytest.MonkeyPatch, fold: int):
    """Make training stop as Ctrl-C stops it (KeyboardInterrupt) when it reaches `fold`: a run left cancelled with its
    earlier folds stored, to resume. Returns the real trainer, for a test that puts it back before resuming."""
    import core.training.engine as engine

    real = engine._train_pack

    def interrupted(cfg, data, fold_of, pack, **kwargs):
        if fold in pack:
            raise KeyboardInterrupt
        return real(cfg, data, fold_of, pack, **kwargs)

    monkeypatch.setattr(engine, "_train_pack", interrupted)
    return real


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so tests never see (or depend on) weights cached on this machine."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="session", autouse=True)
def data_roots_allow_test_folders(tmp_path_factory):
    """Pages accept typed paths only under CXR_DATA_ROOTS (core/safety.py); tests type paths under pytest's temp folder.

    tests/test_security.py sets its own roots to check the limit itself.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_DATA_ROOTS", os.pathsep.join([str(tmp_path_factory.getbasetemp()), "data"]))
        yield


# Fixtures that train a model or start a server: every test using one belongs to the slow part, whatever it then checks.
SLOW_FIXTURES = {"finished", "finished_run", "run_with_models", "server", "demo_server", "sweep"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model, starts a process or a server, or takes more than ~1.5 s here; "
                                       "`pytest -m \"not slow\"` runs the quick rest")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
