"""How long a training run has left, from its own measured iteration times.

The naive estimate (elapsed x remaining / done) swung from "about 400 s left" to "64 s left" within
minutes of a quick demo: the first iterations carry one-off costs (thread pools, allocator warm-up,
the first batch's decoding), so early on they inflate every later iteration's predicted cost, and
the time between folds (held-out evaluation, Grad-CAM, saving the model) is not in `elapsed_s` at
all. So: the median of the most recent iteration times (one slow step cannot swing it, and the
warm-up falls out of the window), plus each remaining fold's measured time outside training.
"""

from __future__ import annotations

import pandas as pd

WINDOW = 30  # recent iterations whose median time per iteration is used


def seconds_per_iteration(curve: pd.DataFrame) -> float | None:
    """Median of the last WINDOW iteration times (differences of `elapsed_s` within a fold); None before there are two."""
    train = curve[curve["phase"] == "train"].sort_values(["fold", "iteration"]) if not curve.empty else curve
    if train.empty:
        return None
    steps = train.groupby("fold")["elapsed_s"].diff().dropna()  # a fold's first row holds its warm-up: no difference there
    steps = steps[steps >= 0]
    if steps.empty:
        return None
    return float(steps.tail(WINDOW).median())


def overhead_per_fold(folds: pd.DataFrame) -> float:
    """Mean wall time of a finished fold outside its training loop (evaluation, Grad-CAM, saving); 0 before any fold finished."""
    done = folds[folds["status"] == "finished"].dropna(subset=["started_at", "finished_at", "train_seconds"]) if not folds.empty else folds
    if done.empty:
        return 0.0
    wall = (pd.to_datetime(done["finished_at"]) - pd.to_datetime(done["started_at"])).dt.total_seconds()
    return float((wall - done["train_seconds"]).clip(lower=0).mean())


def eta_seconds(curve: pd.DataFrame, folds: pd.DataFrame, *, done: int, total: int | None, n_folds: int) -> float | None:
    """Seconds left: remaining iterations at the recent pace, plus the measured per-fold overhead for each fold not yet
    finished. None while there is nothing to go by (fewer than two iterations) or no known budget."""
    rate = seconds_per_iteration(curve)
    if rate is None or not total:
        return None
    n_finished = int((folds["status"] == "finished").sum()) if not folds.empty else 0
    return max(0, total - done) * rate + max(0, n_folds - n_finished) * overhead_per_fold(folds)
