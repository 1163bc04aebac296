"""Cross-validation splits: stratified k-fold, seeded, grouped by patient whenever patients are known.

The study split images at random and listed the resulting patient overlap as a limitation;
here a patient's images always share one fold unless the user turns grouping off.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of one repeat: the run's own seed for the first (so repeats=1 splits exactly as before), then
    seeds drawn from (seed, repeat), so repeat 2 of seed 0 is not repeat 1 of seed 1."""
    return seed if repeat == 0 else int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0] % 2**31)


def assign_repeated_folds(
    labels: np.ndarray, groups: np.ndarray | None, *, folds: int, repeats: int, seed: int, class_names: list[str] | None = None
) -> np.ndarray:
    """(repeats, N) fold numbers: repeat r splits the images anew (`repeat_seed`) into folds r*k .. r*k + k-1.

    Every image is held out exactly once per repeat, a patient's images share a fold within each repeat,
    and numbering the folds across repeats lets every fold keep one id in the store (fold g is fold
    g % k of repeat g // k).
    """
    return np.stack([assign_folds(labels, groups, folds=folds, seed=repeat_seed(seed, r), class_names=class_names) + r * folds
                     for r in range(repeats)])


def held_out(fold_of: np.ndarray, fold: int) -> np.ndarray:
    """Which images fold `fold` holds out: (N,) bool, from a (N,) or (repeats, N) array of fold numbers."""
    return np.atleast_2d(np.asarray(fold_of) == fold).any(axis=0)


def check_no_leak(fold_of: np.ndarray, groups: np.ndarray) -> None:
    """Raise when any patient's images sit in more than one fold."""
    pairs = np.unique(np.stack([np.asarray(groups).astype(str), np.asarray(fold_of).astype(str)]), axis=1)
    patients, n_folds = np.unique(pairs[0], return_counts=True)
    leaking = patients[n_folds > 1]
    if len(leaking):
        raise CxrError(f"{len(leaking)} patient(s) appear in more than one fold (e.g. {leaking[0]}); the split would leak")


@dataclass(frozen=True)
class LeakAudit:
    """Whether any patient's images sit in more than one fold, checked on the split a run actually uses."""

    status: str  # "clean": no patient in two folds | "leaks": some are | "unchecked": no patient ids to check with
    n_patients: int
    leaking_patients: int
    leaking_images: int
    examples: tuple[str, ...]

    @property
    def message(self) -> str:
        if self.status == "unchecked":
            return "not checked: the data set has no patient ids, so images of one patient may sit in different folds"
        if self.status == "clean":
            return f"no patient in two folds ({self.n_patients} patients)"
        return (f"{self.leaking_patients} of {self.n_patients} patients ({self.leaking_images} images) have images in more than one fold, "
                f"e.g. {', '.join(self.examples)}")


def audit_leakage(fold_of: np.ndarray, groups: np.ndarray | None) -> LeakAudit:
    """Audit a fold assignment against patient ids (whoever made it: this tool, a sweep, or the user's own fold column).

    A (repeats, N) assignment is audited repeat by repeat; the first that leaks is the answer.
    """
    if groups is None:
        return LeakAudit("unchecked", 0, 0, 0, ())
    if np.ndim(fold_of) == 2:
        audits = [audit_leakage(row, groups) for row in np.asarray(fold_of)]
        return next((a for a in audits if a.status == "leaks"), audits[0])
    groups = np.asarray(groups).astype(str)
    fold_of = np.asarray(fold_of)
    patients, inverse = np.unique(groups, return_inverse=True)
    folds_per_patient = np.array([len(np.unique(fold_of[inverse == k])) for k in range(len(patients))])
    leaking = patients[folds_per_patient > 1]
    n_images = int(np.isin(groups, leaking).sum())
    return LeakAudit("leaks" if len(leaking) else "clean", len(patients), len(leaking), n_images, tuple(leaking[:3].tolist()))


def parse_user_folds(values: list[str], *, column: str) -> np.ndarray:
    """A user-supplied fold column as 0-based fold indices; 1..k and 0..k-1 are both accepted.

    Raises:
        CxrError: non-integer values, or folds that are not consecutive.
    """
    try:
        raw = np.array([int(str(v).strip()) for v in values])
    except ValueError:
        bad = next(v for v in values if not str(v).strip().lstrip("-").isdigit())
        raise CxrError(f"fold column {column!r} must hold whole fold numbers (1..k or 0..k-1); found {bad!r}") from None
    found = np.unique(raw)
    start = found.min() if len(found) else 0
    if start not in (0, 1) or not np.array_equal(found, np.arange(start, start + len(found))):
        raise CxrError(f"fold column {column!r} must number folds 1..k (or 0..k-1) without gaps; found {', '.join(map(str, found[:12]))}")
    if len(found) < 2:
        raise CxrError(f"fold column {column!r} holds a single fold; cross-validation needs at least two")
    return raw - start
