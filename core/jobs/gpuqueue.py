"""Two runs on one GPU: the rule is "one CUDA run at a time per runs folder; the others queue".

A run that trains on CUDA holds an exclusive lock (fcntl.flock) on `<runs-dir>/gpu.lock`
from its first fold to its pooled metrics. A second CUDA run started meanwhile is stored
with status `queued` and polls the lock once a second; it starts when the first one ends,
however that ends: the kernel drops the lock when the holding process exits, `kill -9` and
power loss included, so a crashed run never blocks the queue. Waiting runs start in no
guaranteed order. CPU runs never queue (they share the cores). Sharing one GPU between two
runs was rejected: each would slow the other and both could run out of memory.

The lock file holds the id of the run that has the GPU, for the "waiting for run ..." notice.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = "gpu.lock"


def holder(runs_dir: Path) -> str:
    """The run id that holds (or last held) the GPU of this runs folder, or ""."""
    try:
        return (Path(runs_dir) / LOCK_NAME).read_text().strip()
    except OSError:
        return ""


@contextmanager
def gpu_slot(runs_dir: Path, run_id: str, *, on_wait: Callable[[str], None] = lambda holder: None,
             poll_s: float = 1.0) -> Iterator[None]:
    """Hold the runs folder's GPU for the block; `on_wait(holder_run_id)` is called once if another run has it first."""
    fd = os.open(Path(runs_dir) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            on_wait(holder(runs_dir))
            while not _try_lock(fd):
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, run_id.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
