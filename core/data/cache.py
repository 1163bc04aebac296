"""The pre-processing cache: each file decoded once per size, keyed by its content, reused by every fold and run.

Keyed by a hash of the file's bytes (not its path or mtime), so a renamed or copied data set
hits the cache and an edited file misses it. Entries are raw `.npy` uint8 arrays: loading
one is a memory copy, no decoding.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.data.decode import DecodeError, decode_bytes, read_bytes

# Bumped whenever decoding changes, so old entries are never mixed with new ones.
CACHE_VERSION = "v2"  # v2: large JPEGs are decoded in draft mode (slightly different pixels)


@dataclass(frozen=True)
class LoadedImage:
    """One manifest row after loading: the pixels, or the reason it was excluded."""

    pixels: np.ndarray | None  # (size, size) uint8
    content_hash: str
    excluded_reason: str
    cache_hit: bool


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageCache:
    """Decoded images on disk under `root/<version>-<size>px/<hh>/<hash>.npy`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, digest: str, size: int) -> Path:
        return self.root / f"{CACHE_VERSION}-{size}px" / digest[:2] / f"{digest}.npy"

    def load(self, path: str | Path, size: int) -> LoadedImage:
        """Pixels of one file at `size`, from the cache when present; never raises for a bad file."""
        try:
            data = read_bytes(path)
        except (DecodeError, OSError) as exc:
            return LoadedImage(None, "", str(exc) if isinstance(exc, DecodeError) else f"cannot read: {exc}", False)
        digest = content_hash(data)
        entry = self.entry(digest, size)
        if entry.is_file():
            try:
                pixels = np.load(entry, allow_pickle=False)
                if pixels.shape == (size, size) and pixels.dtype == np.uint8:
                    return LoadedImage(pixels, digest, "", True)
            except (OSError, ValueError):
                pass  # a damaged entry is simply rebuilt below
        try:
            pixels = decode_bytes(data, size)
        except DecodeError as exc:
            return LoadedImage(None, digest, str(exc), False)
        _atomic_save(entry, pixels)
        return LoadedImage(pixels, digest, "", False)

    def load_many(
        self,
        paths: list[str],
        size: int,
        *,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[LoadedImage]:
        """Load files in parallel threads (PIL and hashing release the GIL), in input order."""
        workers = workers or min(8, os.cpu_count() or 1)
        results: list[LoadedImage] = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, result in enumerate(pool.map(lambda p: self.load(p, size), paths), start=1):
                results.append(result)
                if progress:
                    progress(i, len(paths))
        return results


def _atomic_save(entry: Path, pixels: np.ndarray) -> None:
    """Write via a temporary file and rename, so a crash or a second process never leaves half an entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, pixels, allow_pickle=False)
        os.replace(tmp, entry)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        # A cache that cannot be written is slower, not wrong: the pixels are still returned.
