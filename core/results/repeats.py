"""Repeated k-fold cross-validation: each repeat's pooled result, their spread, and the corrected test between two runs.

A run with `repeats` = R trains R x k folds, each repeat on a new split (core/data/splits.py). Its
reported statistics stay those of the first repeat (the run as it would be with repeats=1); what the
repeats add is how much the result moves with the split alone, which is what a reviewer needs before
reading a difference between two settings. Two runs evaluated on the same R x k splits (a sweep's
runs, or runs with the same seed, folds and data) are compared fold by fold with the Nadeau-Bengio
corrected resampled t-test (core/results/stats.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.results.records import RunRecord
from core.results.stats import auc_delong, corrected_resampled_ttest, wilson
from core.results.store import Store


def per_repeat(preds: pd.DataFrame, *, positive: int, threshold: float = 0.5) -> list[dict]:
    """One row per repeat from every repeat's predictions (`Store.repeated_predictions`): the pooled out-of-fold AUC
    with its DeLong interval, and accuracy, sensitivity and specificity (Wilson intervals) at `threshold`."""
    rows = []
    for repeat, group in preds.groupby("repeat", sort=True):
        y = group["label_index"].to_numpy() == positive
        s = group["prob_positive"].to_numpy(dtype=float)
        call = s >= threshold
        ci = auc_delong(y, s)
        tp, tn = int((call & y).sum()), int((~call & ~y).sum())
        row = {"repeat": int(repeat), "n": int(len(group)), "auc": ci.auc, "auc_ci_low": ci.low, "auc_ci_high": ci.high}
        for name, k, n in [("accuracy", tp + tn, len(y)), ("sensitivity", tp, int(y.sum())), ("specificity", tn, int((~y).sum()))]:
            row[name] = k / n if n else float("nan")
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = wilson(k, n)
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean, SD (n - 1), minimum and maximum of the repeats' pooled AUC, sensitivity and specificity."""
    out: dict = {"repeats": len(rows)}
    for key in ("auc", "sensitivity", "specificity"):
        values = np.array([r[key] for r in rows], dtype=float)
        out[f"{key}_mean"] = float(np.mean(values)) if len(values) else float("nan")
        out[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out[f"{key}_min"], out[f"{key}_max"] = (float(values.min()), float(values.max())) if len(values) else (float("nan"),) * 2
    return out


def repeats_of(store: Store, run: RunRecord, *, threshold: float = 0.5) -> tuple[list[dict], dict] | None:
    """(per-repeat rows, summary) of a run with repeats > 1; None for a run of one repeat."""
    if run.config.repeats <= 1:
        return None
    rows = per_repeat(store.repeated_predictions(run.run_id), positive=run.positive_index, threshold=threshold)
    return rows, summary(rows)


def same_splits(store: Store, a: str, b: str) -> bool:
    """Whether two runs held out exactly the same images in every fold of every repeat."""
    sa, sb = store.all_splits(a), store.all_splits(b)
    if len(sa) != len(sb) or sa.empty:
        return False
    key = ["repeat", "image_id"]
    merged = sa.merge(sb, on=key, suffixes=("_a", "_b"))
    return len(merged) == len(sa) and bool((merged["fold_a"] == merged["fold_b"]).all())


def corrected_test(store: Store, a: str, b: str) -> dict | None:
    """Run `a` against run `b` over their shared R x k folds (per-fold AUC): the corrected resampled t-test, or None when
    the runs are not repeated or not on the same splits (then no valid paired comparison over repeats exists)."""
    fa, fb = store.folds(a, every_repeat=True), store.folds(b, every_repeat=True)
    repeated = len(fa) > len(store.folds(a))  # one k-fold run: DeLong on its pooled predictions is the test
    if not repeated or len(fa) < 4 or len(fa) != len(fb) or not same_splits(store, a, b):
        return None
    merged = fa[fa["status"] == "finished"].merge(fb[fb["status"] == "finished"], on="fold", suffixes=("_a", "_b"))
    if len(merged) != len(fa):
        return None
    test = corrected_resampled_ttest(merged["auc_a"].to_numpy(), merged["auc_b"].to_numpy(),
                                     n_train=float(merged["n_train_a"].mean()), n_test=float(merged["n_test_a"].mean()))
    return {"mean_auc_difference": test.mean_difference, "t": test.t, "df": test.df, "p": test.p, "folds": test.n}
