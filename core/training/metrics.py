"""Classification metrics as pure functions, all built from the confusion matrix and scikit-learn's AUC.

Sensitivity and specificity are for the run's positive class against all others (the study:
Pleural Effusion against Normal); with more than two classes the AUC is the macro average of
one-vs-rest AUCs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def confusion(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class (scikit-learn's layout).

    The MATLAB chart in the study puts predicted classes in rows: transpose for that view.
    """
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def auc(y_true: np.ndarray, probs: np.ndarray, *, positive: int) -> float:
    """Binary: AUC of the positive class's probability. N classes: macro one-vs-rest AUC. NaN when undefined."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=float)
    if len(np.unique(y_true)) < 2:
        return float("nan")  # a fold holding one class has no ROC curve
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true == positive, probs[:, positive]))
    present = np.unique(y_true)
    scores = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def summarize(y_true: np.ndarray, probs: np.ndarray, *, positive: int) -> dict:
    """Accuracy, sensitivity, specificity, AUC and the confusion matrix of predictions.

    Args:
        y_true: (N,) true class indices.
        probs: (N, C) class probabilities (softmax); the call is the arg-max (0.5 for two classes).
        positive: index of the positive class.
    """
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    matrix = confusion(y_true, y_pred, n_classes=probs.shape[1])
    tp = matrix[positive, positive]
    fn = matrix[positive].sum() - tp
    fp = matrix[:, positive].sum() - tp
    tn = matrix.sum() - tp - fn - fp
    return {
        "accuracy": _ratio(np.trace(matrix), matrix.sum()),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "auc": auc(y_true, probs, positive=positive),
        "tp": int(tp),
        "fn": int(fn),
        "fp": int(fp),
        "tn": int(tn),
        "confusion": matrix.tolist(),
    }
