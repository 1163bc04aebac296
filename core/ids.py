"""Ids of runs and sweeps: sortable by start time, unique enough for one lab, and importable without torch.

Kept apart from core.training.engine so that what only starts or lists jobs (the pages, core/jobs/launch.py) does not
import the training code, and torch with it, to make an id.
"""

from __future__ import annotations

import secrets
import time


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def new_sweep_id() -> str:
    return "sweep-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
