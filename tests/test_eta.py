"""The Train page's time left: from the recent pace, not dragged by the warm-up, with the time between folds counted."""

from __future__ import annotations

import pandas as pd
import pytest

from core.results.eta import eta_seconds, overhead_per_fold, seconds_per_iteration


def _curve(times_by_fold: dict[int, list[float]]) -> pd.DataFrame:
    rows = [{"fold": f, "phase": "train", "iteration": i + 1, "elapsed_s": t} for f, ts in times_by_fold.items() for i, t in enumerate(ts)]
    rows.append({"fold": 0, "phase": "heldout", "iteration": 2, "elapsed_s": 999.0})  # evaluation rows do not count
    return pd.DataFrame(rows)


def _folds(*walls_and_train: tuple[float, float]) -> pd.DataFrame:
    start = pd.Timestamp("2026-12-05 08:00:00")
    return pd.DataFrame([{"fold": k, "status": "finished", "started_at": start, "finished_at": start + pd.Timedelta(seconds=wall),
                          "train_seconds": train} for k, (wall, train) in enumerate(walls_and_train)])


NO_FOLDS = pd.DataFrame(columns=["fold", "status", "started_at", "finished_at", "train_seconds"])


def test_a_slow_first_iteration_does_not_inflate_the_estimate():
    # 10 s of warm-up, then 1 s per iteration: the naive estimate after 5 of 100 iterations says 266 s left
    curve = _curve({0: [10, 11, 12, 13, 14]})
    assert seconds_per_iteration(curve) == 1.0
    assert eta_seconds(curve, NO_FOLDS, done=5, total=100, n_folds=1) == 95.0


def test_the_recent_pace_counts_and_one_slow_step_does_not_swing_it():
    times = [1.0 * i for i in range(1, 41)] + [40 + 0.5 * i for i in range(1, 41)]  # 1 s per iteration, then 0.5 s
    times[60] += 20  # one stall
    times[61:] = [t + 20 for t in times[61:]]
    assert seconds_per_iteration(_curve({0: times})) == 0.5


def test_each_unfinished_fold_adds_the_measured_time_outside_training():
    folds = _folds((50.0, 40.0))  # fold 1: 40 s training, 10 s evaluation, Grad-CAM and saving
    curve = _curve({0: [2.0 * i for i in range(1, 21)], 1: [5.0, 7.0, 9.0]})
    assert overhead_per_fold(folds) == 10.0
    # 17 iterations left at 2 s, and folds 2 and 3 each still to finish (10 s each)
    assert eta_seconds(curve, folds, done=23, total=40, n_folds=3) == pytest.approx(17 * 2.0 + 2 * 10.0)


def test_too_early_to_tell_is_none_not_a_guess():
    assert eta_seconds(_curve({0: [3.0]}), NO_FOLDS, done=1, total=50, n_folds=5) is None
    assert eta_seconds(pd.DataFrame(), NO_FOLDS, done=0, total=50, n_folds=5) is None
    assert eta_seconds(_curve({0: [1.0, 2.0]}), NO_FOLDS, done=2, total=None, n_folds=5) is None
