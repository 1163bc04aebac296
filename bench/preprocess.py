"""(a) Pre-processing: a naive full PIL decode + resize against our cache (draft-mode JPEG decoding, worker processes, .npy entries).

The files are generated: radiograph-like grayscale JPEGs of MIMIC-CXR-JPG's size (about 3000 x 2500,
quality 95) with sensor-like noise, so they compress like scans rather than like flat test images.
Every path reads the same files (already in the OS page cache after generation, so disk speed
does not enter), and each of our passes starts from an empty cache folder except the cached one.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.sizes import BenchSize
from core.data.cache import PROCESS_MIN_BYTES, ImageCache, usable_cpus


@functools.lru_cache(maxsize=2)
def _body(h: int, w: int) -> np.ndarray:
    """A soft thorax-shaped brightness profile, 10 % larger than the image so each file can take a shifted crop."""
    H, W = int(h * 1.1), int(w * 1.1)
    y = np.linspace(-1.1, 1.1, H, dtype=np.float32)[:, None]
    x = np.linspace(-1.1, 1.1, W, dtype=np.float32)[None, :]
    body = 150 * np.exp(-((x**2 / 0.45 + y**2 / 0.8) ** 2))
    lungs = 60 * np.exp(-(((np.abs(x) - 0.35) ** 2 / 0.04 + (y + 0.1) ** 2 / 0.25) ** 2))
    return (body - lungs + 30).astype(np.int16)


def make_radiograph_jpeg(path: str, seed: int, h: int, w: int) -> int:
    """Write one radiograph-like JPEG (quality 95, as MIMIC-CXR-JPG) and return its size in bytes."""
    rng = np.random.default_rng(seed)
    body = _body(h, w)
    oy, ox = rng.integers(0, body.shape[0] - h + 1), rng.integers(0, body.shape[1] - w + 1)
    texture = Image.fromarray(rng.integers(0, 256, (h // 100 + 2, w // 100 + 2), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = body[oy : oy + h, ox : ox + w] + (np.asarray(texture, np.int16) >> 2) + rng.integers(-4, 5, (h, w), dtype=np.int16)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=95)
    return Path(path).stat().st_size


def generate(folder: Path, n: int, hw: tuple[int, int], *, workers: int | None = None) -> list[str]:
    """`n` distinct JPEGs in `folder` (distinct content, so every one is its own cache entry)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"cxr_{i:04d}.jpg") for i in range(n)]
    workers = workers or usable_cpus()
    jobs = [(p, 1000 + i, *hw) for i, p in enumerate(paths)]
    if workers > 1 and n >= 16:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_make, jobs, chunksize=max(1, n // (4 * workers))))
    else:
        for job in jobs:
            _make(job)
    return paths


def _make(job: tuple) -> int:
    return make_radiograph_jpeg(*job)


def naive_decode(path: str, size: int) -> np.ndarray:
    """What a plain pipeline does: decode the whole image, then resize (bicubic)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.BICUBIC), dtype=np.uint8)


def run(size: BenchSize, workdir: Path, *, log=print) -> dict:
    files = generate(workdir / "jpegs", size.n_files, size.file_hw)
    mb = float(np.mean([Path(p).stat().st_size for p in files]) / 1e6)
    log(f"(a) pre-processing: {len(files)} generated {size.file_hw[0]}x{size.file_hw[1]} JPEGs ({mb:.2f} MB each) -> {size.pre_size} px")
    n, s = len(files), size.pre_size

    t0 = time.perf_counter()
    naive = [naive_decode(p, s) for p in files]
    naive_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    serial = ImageCache(workdir / "cache_serial").load_many(files, s, executor="serial")
    serial_s = time.perf_counter() - t0

    workers = usable_cpus()
    cache = ImageCache(workdir / "cache")
    t0 = time.perf_counter()
    parallel = cache.load_many(files, s, workers=workers)  # what a run does: auto (processes for many misses)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = cache.load_many(files, s, workers=workers)
    cached_s = time.perf_counter() - t0

    assert all(a.pixels is not None and np.array_equal(a.pixels, b.pixels) for a, b in zip(serial, parallel))
    assert all(c.cache_hit for c in cached)
    diff = np.abs(np.stack([p.pixels for p in parallel]).astype(np.int16) - np.stack(naive).astype(np.int16))
    return {
        "n_files": n, "file_hw": list(size.file_hw), "mean_file_mb": round(mb, 3), "image_size": s, "workers": workers,
        "executor": "processes" if mb * n * 1e6 >= PROCESS_MIN_BYTES and workers > 1 else "threads",
        "naive_s": naive_s, "ours_serial_s": serial_s, "ours_parallel_s": parallel_s, "ours_cached_s": cached_s,
        "naive_img_per_s": n / naive_s, "ours_serial_img_per_s": n / serial_s, "ours_parallel_img_per_s": n / parallel_s,
        "ours_cached_img_per_s": n / cached_s,
        "mean_abs_diff_vs_naive": float(diff.mean()), "max_abs_diff_vs_naive": int(diff.max()),
        "files": files,
    }
