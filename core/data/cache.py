"""The pre-processing cache: each file decoded once per size, keyed by its content, reused by every fold and run.

Keyed by a hash of the file's bytes (not its path or mtime), so a renamed or copied data set
hits the cache and an edited file misses it. Entries are raw `.npy` uint8 arrays: loading
one is a memory copy, no decoding.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.data.decode import DecodeError, decode_bytes, read_bytes

# Bumped whenever decoding changes, so old entries are never mixed with new ones.
CACHE_VERSION = "v2"  # v2: large JPEGs are decoded in draft mode (slightly different pixels)

# Worker processes cost 0.4-0.8 s to start (a pool of two on this 2-core machine, measured); a
# 1.9 MB 3000 x 2500 JPEG takes about 30 ms to decode (draft mode), a 20 KB demo PNG about 1 ms. So
# processes only decode when the files still to decode hold at least this many bytes (about 35
# radiograph JPEGs); smaller work goes to threads, where Pillow's decoders release the GIL.
PROCESS_MIN_BYTES = 64 * 2**20
EXECUTORS = ("auto", "process", "thread", "serial")

log = logging.getLogger(__name__)


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
        found = self._probe(path, size)
        return found if isinstance(found, LoadedImage) else self._decode(*found, size)

    def _probe(self, path: str | Path, size: int) -> LoadedImage | tuple[bytes, str]:
        """The cached (or unreadable) result, or the (bytes, digest) that still need decoding."""
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
                pass  # a damaged entry is simply rebuilt
        return data, digest

    def _decode(self, data: bytes, digest: str, size: int) -> LoadedImage:
        try:
            pixels = decode_bytes(data, size)
        except DecodeError as exc:
            return LoadedImage(None, digest, str(exc), False)
        _atomic_save(self.entry(digest, size), pixels)
        return LoadedImage(pixels, digest, "", False)

    def load_many(
        self,
        paths: list[str],
        size: int,
        *,
        workers: int | None = None,
        executor: str = "auto",
        progress: Callable[[int, int], None] | None = None,
    ) -> list[LoadedImage]:
        """Load files in input order: cache hits in threads, the files still to decode in worker processes.

        Hashing and reading `.npy` entries release the GIL, so threads serve cached files. Decoding
        is CPU work in Pillow, so with `executor="auto"` cache misses holding PROCESS_MIN_BYTES or
        more go to a pool of `workers` processes (default: the usable CPUs), in chunks; less goes
        to threads. `process`, `thread` and `serial` force one way (tests, benchmarks). Wherever
        processes cannot start or die, the remaining files are decoded in threads: the result
        is the same, only slower. Every path gives exactly the pixels and reasons of `load`.
        """
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        workers = max(1, workers or usable_cpus())
        n = len(paths)
        results: list[LoadedImage | None] = [None] * n
        done = 0

        def tick(k: int = 1) -> None:
            nonlocal done
            done += k
            if progress:
                progress(done, n)

        # 1) read, hash and look up every file; hits (and unreadable files) are final here.
        pending: list[int] = []
        pending_bytes = 0

        def probe(path: str) -> LoadedImage | int:
            found = self._probe(path, size)
            return found if isinstance(found, LoadedImage) else len(found[0])  # never hold every file's bytes at once

        if executor == "serial" or workers == 1:
            found_all = map(probe, paths)
            threads = None
        else:
            threads = ThreadPoolExecutor(max_workers=min(8, 2 * workers))
            found_all = threads.map(probe, paths)
        try:
            for i, found in enumerate(found_all):
                if isinstance(found, LoadedImage):
                    results[i] = found
                    tick()
                else:
                    pending.append(i)
                    pending_bytes += found
        finally:
            if threads is not None:
                threads.shutdown()
        # 2) decode the misses. Workers re-read their files by path: cheaper than shipping the bytes.
        if pending:
            use_processes = executor == "process" or (executor == "auto" and workers > 1 and len(pending) > 1
                                                      and pending_bytes >= PROCESS_MIN_BYTES)
            if use_processes:
                pending = self._decode_in_processes(paths, pending, size, workers, results, tick)
            if pending:
                def decode(i: int) -> LoadedImage:
                    return self.load(paths[i], size)

                if executor == "serial" or workers == 1:
                    decoded = map(decode, pending)
                    for i, item in zip(pending, decoded):
                        results[i] = item
                        tick()
                else:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        for i, item in zip(pending, pool.map(decode, pending)):
                            results[i] = item
                            tick()
        return results  # type: ignore[return-value]

    def _decode_in_processes(self, paths: list[str], pending: list[int], size: int, workers: int,
                             results: list, tick: Callable[[int], None]) -> list[int]:
        """Decode `pending` in a spawned process pool, chunk by chunk; returns the indices it could not do."""
        workers = min(workers, len(pending))
        chunk = max(1, min(32, len(pending) // (4 * workers)))
        chunks = [pending[k : k + chunk] for k in range(0, len(pending), chunk)]
        left = set(pending)
        try:
            # spawn, not fork: the parent may hold torch's and other threads, which fork would copy mid-flight.
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [(idx, pool.submit(_load_chunk, str(self.root), [str(paths[i]) for i in idx], size)) for idx in chunks]
                for idx, future in futures:
                    for i, item in zip(idx, future.result()):
                        results[i] = item
                        left.discard(i)
                    tick(len(idx))
        except Exception as exc:  # no /dev/shm, a daemonic parent, a killed worker, a sandbox: threads do the rest
            log.warning("decoding in worker processes failed (%s: %s); decoding %d files in threads instead",
                        type(exc).__name__, exc, len(left))
        return [i for i in pending if i in left]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_chunk(root: str, paths: list[str], size: int) -> list[LoadedImage]:
    """Worker-process side of load_many: the same `load`, so results equal the serial path's."""
    cache = ImageCache(root)
    return [cache.load(p, size) for p in paths]


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
