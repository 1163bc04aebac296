"""Decoding in worker processes: the same pixels and exclusion reasons as one-by-one decoding, and close to a full decode."""

from __future__ import annotations

import pytest

import io
import logging

import numpy as np
from PIL import Image

from core.data.cache import ImageCache

from conftest import write_image


def _jpeg(path, width, height, seed):
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    gray = (np.asarray(low, np.float32) * 0.6 + rng.normal(0, 4, (height, width)) + 50).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray).save(path, format="JPEG", quality=92)
    return str(path)


def _mixed_files(root):
    """Big JPEGs (drafted), small PNGs and the usual bad files, interleaved."""
    rng = np.random.default_rng(3)
    paths = [_jpeg(root / f"big_{i}.jpg", 1000, 1200, i) for i in range(4)]
    paths += [str(write_image(root / f"small_{i}.png", rng.integers(0, 255, (40, 50)).astype(np.uint8))) for i in range(6)]
    (root / "junk.png").write_bytes(b"not an image")
    (root / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64)).astype(np.uint8)).save(buf, format="PNG")
    (root / "cut.png").write_bytes(buf.getvalue()[:200])
    bad = [str(root / "junk.png"), str(root / "empty.png"), str(root / "cut.png"), str(root / "missing.png")]
    return [p for pair in zip(paths, paths[::-1]) for p in pair][: len(paths)] + bad + paths[:2]  # repeats too


@pytest.mark.slow
def test_process_pool_and_serial_give_identical_pixels_and_reasons(tmp_path):
    paths = _mixed_files(tmp_path / "files")
    serial = ImageCache(tmp_path / "c1").load_many(paths, 224, executor="serial")
    seen = []
    parallel = ImageCache(tmp_path / "c2").load_many(paths, 224, executor="process", workers=2, progress=lambda d, t: seen.append((d, t)))
    assert len(serial) == len(parallel) == len(paths)
    for a, b in zip(serial, parallel):
        assert a.excluded_reason == b.excluded_reason and a.content_hash == b.content_hash
        assert (a.pixels is None) == (b.pixels is None)
        if a.pixels is not None:
            assert a.pixels.dtype == np.uint8 and np.array_equal(a.pixels, b.pixels)
    reasons = " | ".join(r.excluded_reason for r in serial)
    assert all(reason in reasons for reason in ("not an image", "empty file", "cannot decode", "file not found"))
    assert seen[-1] == (len(paths), len(paths)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the second pass is served from the cache the workers wrote, identically
    again = ImageCache(tmp_path / "c2").load_many(paths, 224, executor="auto")
    assert all(r.cache_hit for r in again if r.pixels is not None)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(again, serial) if a.pixels is not None)


def test_processes_that_cannot_start_fall_back_to_threads(tmp_path, monkeypatch, caplog):
    paths = _mixed_files(tmp_path / "files")
    expected = ImageCache(tmp_path / "c1").load_many(paths, 64, executor="serial")

    def refuse(*args, **kwargs):
        raise OSError("no semaphores here")

    monkeypatch.setattr("core.data.cache.ProcessPoolExecutor", refuse)
    with caplog.at_level(logging.WARNING, logger="core.data.cache"):
        got = ImageCache(tmp_path / "c2").load_many(paths, 64, executor="process", workers=2)
    assert "decoding in worker processes failed" in caplog.text
    assert [r.excluded_reason for r in got] == [r.excluded_reason for r in expected]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(got, expected) if a.pixels is not None)


@pytest.mark.slow
def test_cached_large_jpegs_match_a_full_decode_and_resize(tmp_path):
    """The cache (draft-mode decoding, in worker processes) against Pillow's plain full-resolution decode + bicubic resize."""
    paths = [_jpeg(tmp_path / f"x{i}.jpg", 2000, 2400, 10 + i) for i in range(2)]
    cached = ImageCache(tmp_path / "c").load_many(paths, 224, executor="process", workers=2)
    for path, item in zip(paths, cached):
        with Image.open(path) as img:
            full = np.asarray(img.convert("L").resize((224, 224), Image.BICUBIC), dtype=np.int16)
        diff = np.abs(item.pixels.astype(np.int16) - full)
        assert diff.mean() < 2 and diff.max() < 16, (diff.mean(), diff.max())


def test_jpeg_and_png_decoding_does_not_load_pydicom():
    """Each worker process would otherwise pay pydicom's import (about 0.4 s) before its first JPEG."""
    import subprocess
    import sys

    code = ("import io, sys, numpy as np; from PIL import Image; from core.data.decode import decode_bytes\n"
            "for fmt in ('JPEG', 'PNG'):\n"
            "    b = io.BytesIO(); Image.fromarray(np.zeros((40, 40), np.uint8)).save(b, format=fmt); decode_bytes(b.getvalue(), 16)\n"
            "assert 'pydicom' not in sys.modules, 'pydicom was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
