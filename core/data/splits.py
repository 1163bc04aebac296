"""Cross-validation splits: stratified k-fold, seeded, grouped by patient whenever patients are known.

The study split images at random and listed the resulting patient overlap as a limitation;
here a patient's images always share one fold unless the user turns grouping off.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from core import CxrError


def assign_folds(
    labels: np.ndarray, groups: np.ndarray | None, *, folds: int, seed: int, class_names: list[str] | None = None
) -> np.ndarray:
    """Fold index (0..folds-1) for every image; each image is in exactly one held-out fold.

    Args:
        labels: (N,) int class indices.
        groups: (N,) patient ids, or None when unknown (then images are split independently).
        folds: number of folds k.
        seed: makes the assignment reproducible; the same inputs and seed give the same folds.
        class_names: for error messages.

    Raises:
        CxrError: when a class has fewer images (or patients) than folds, or only one class exists.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise CxrError("only one class in the data set; a classifier needs at least two (check labels or positive_labels)")
    unit = "images"
    if groups is not None:
        groups = np.asarray(groups)
        unit = "patients"
        counts = np.array([len(np.unique(groups[labels == c])) for c in classes])
    if counts.min() < folds:
        worst = int(classes[counts.argmin()])
        name = repr(class_names[worst]) if class_names else f"#{worst}"
        raise CxrError(
            f"class {name} has only {counts.min()} {unit} but {folds} folds were asked for; "
            f"use --set folds={max(2, int(counts.min()))} or add data"
        )
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    x = np.zeros(len(labels))
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels)
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels, groups)
    for k, (_, test_idx) in enumerate(splits):
        fold_of[test_idx] = k
    assert (fold_of >= 0).all(), "every image must land in a held-out fold"
    if groups is not None:
        check_no_leak(fold_of, groups)
    return fold_of


def check_no_leak(fold_of: np.ndarray, groups: np.ndarray) -> None:
    """Raise when any patient's images sit in more than one fold."""
    pairs = np.unique(np.stack([np.asarray(groups).astype(str), np.asarray(fold_of).astype(str)]), axis=1)
    patients, n_folds = np.unique(pairs[0], return_counts=True)
    leaking = patients[n_folds > 1]
    if len(leaking):
        raise CxrError(f"{len(leaking)} patient(s) appear in more than one fold (e.g. {leaking[0]}); the split would leak")
