"""Uncertainty and comparison: Wilson and DeLong intervals, paired DeLong tests, Holm, ROC bands, operating points, calibration.

Pure functions on arrays: labels are booleans (True = positive class), scores are the positive
class's probability. References: Wilson 1927; DeLong, DeLong & Clarke-Pearson 1988 (Biometrics
44:837) in the fast mid-rank form of Sun & Xu 2014 (IEEE SPL 21:1389), matched against R's pROC
(`ci.auc`, `roc.test(method = "delong", paired = TRUE)`) in tests/test_stats.py; Holm 1979.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

# The normal distribution and mid-ranks come from the standard library and numpy, not scipy.stats: importing
# scipy.stats takes most of a second here (0.9 s with sklearn), which the first visitor of a results page would wait for.
_NORMAL = NormalDist()


@lru_cache(maxsize=8)  # a comparison asks for the same z hundreds of times
def _z(level: float) -> float:
    return _NORMAL.inv_cdf(0.5 + level / 2)


def rankdata(x: np.ndarray) -> np.ndarray:
    """Mid-ranks from 1 (ties share the mean of their ranks), as scipy.stats.rankdata(x) with its default 'average'."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(x[order])) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def wilson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; (nan, nan) when n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact bounds at the ends (the formula leaves rounding dust like 3e-17 there)
    low = 0.0 if k == 0 else float(max(0.0, centre - half))
    high = 1.0 if k == n else float(min(1.0, centre + half))
    return low, high


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components V10 (per positive) and V01 (per negative), via mid-ranks."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError("an AUC needs at least one positive and one negative image")
    all_ranks = rankdata(np.concatenate([pos, neg]))
    tx, ty = rankdata(pos), rankdata(neg)
    v10 = (all_ranks[:m] - tx) / n  # share of negatives each positive beats (ties count one half)
    v01 = 1.0 - (all_ranks[m:] - ty) / m  # share of positives that beat each negative
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class AucCI:
    auc: float
    low: float
    high: float
    se: float


def auc_delong(y: np.ndarray, s: np.ndarray, *, level: float = 0.95) -> AucCI:
    """AUC with DeLong's interval, clipped to [0, 1] as pROC's `ci.auc(method = "delong")`."""
    auc, v10, v01 = _placements(y, s)
    var = np.var(v10, ddof=1) / len(v10) + np.var(v01, ddof=1) / len(v01) if len(v10) > 1 and len(v01) > 1 else np.nan
    se = float(np.sqrt(var))
    z = _z(level)
    return AucCI(auc, float(np.clip(auc - z * se, 0, 1)), float(np.clip(auc + z * se, 0, 1)), se)


@dataclass(frozen=True)
class PairedTest:
    auc1: float
    auc2: float
    z: float
    p: float


def delong_paired(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> PairedTest:
    """Two-sided DeLong test of two correlated AUCs on the same images (pROC `roc.test(..., paired = TRUE)`)."""
    a1, v10a, v01a = _placements(y, s1)
    a2, v10b, v01b = _placements(y, s2)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / len(v10a) + s01 / len(v01a)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 0:
        return PairedTest(a1, a2, 0.0 if a1 == a2 else float("inf"), 1.0 if a1 == a2 else 0.0)
    z = (a1 - a2) / np.sqrt(var)
    return PairedTest(a1, a2, float(z), math.erfc(abs(float(z)) / math.sqrt(2)))


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    k = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (k - i) * p[idx]))
        out[idx] = running
    return out


def roc_band(
    y: np.ndarray, s: np.ndarray, *, groups: np.ndarray | None = None, n_boot: int = 500, level: float = 0.95, seed: int = 0,
    grid: int = 101,
) -> dict[str, np.ndarray]:
    """Pointwise bootstrap band of TPR over a fixed FPR grid; resamples whole patients when groups are given.

    Returns fpr (grid,), tpr (the ROC of the data itself, interpolated), low and high.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    fpr_grid = np.linspace(0, 1, grid)
    rng = np.random.default_rng(seed)
    units = np.unique(groups) if groups is not None else None
    members = {g: np.flatnonzero(groups == g) for g in units} if units is not None else None
    curves = []
    for _ in range(n_boot):
        if units is None:
            idx = rng.integers(0, len(y), len(y))
        else:
            idx = np.concatenate([members[g] for g in rng.choice(units, len(units))])
        if y[idx].all() or not y[idx].any():
            continue
        curves.append(_tpr_at(y[idx], s[idx], fpr_grid))
    tails = (1 - level) / 2
    tpr = _tpr_at(y, s, fpr_grid)
    if not curves:  # n_boot = 0: the curve alone
        return {"fpr": fpr_grid, "tpr": tpr, "low": tpr.copy(), "high": tpr.copy()}
    curves = np.array(curves)
    return {"fpr": fpr_grid, "tpr": tpr, "low": np.quantile(curves, tails, axis=0), "high": np.quantile(curves, 1 - tails, axis=0)}


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) exactly as scikit-learn's `roc_curve(y, s)` (drop_intermediate=True) returns them.

    Why not sklearn's: its input validation costs about 1.5 ms a call, and the cross-fitted operating
    points and bootstrap bands call it hundreds of times per run; tests/test_stats.py checks the two agree.
    """
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # the last index of each distinct score
    tps = np.cumsum(y_sorted)[last].astype(float)
    fps = 1 + last - tps
    thresholds = s_sorted[last]
    if len(fps) > 2:  # corners only, as sklearn does from three points on
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps, thresholds = np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):  # one class only: nan, as sklearn (which also warns)
        return fps / fps[-1], tps / tps[-1], thresholds


def _tpr_at(y: np.ndarray, s: np.ndarray, fpr_grid: np.ndarray) -> np.ndarray:
    fpr, tpr, _ = roc_curve(y, s)
    return np.interp(fpr_grid, fpr, tpr)


def threshold_youden(y: np.ndarray, s: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (calls are score >= threshold)."""
    fpr, tpr, thr = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


def threshold_for_sensitivity(y: np.ndarray, s: np.ndarray, min_sensitivity: float) -> float:
    """The highest threshold whose sensitivity is at least `min_sensitivity`."""
    _, tpr, thr = roc_curve(y, s)
    ok = np.flatnonzero(tpr >= min_sensitivity)
    return float(min(thr[ok[0]], 1.0))


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float, *, level: float = 0.95) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy (each with a Wilson interval) for calls s >= threshold."""
    y = np.asarray(y, dtype=bool)
    call = np.asarray(s, dtype=float) >= threshold
    tp, fn = int((call & y).sum()), int((~call & y).sum())
    fp, tn = int((call & ~y).sum()), int((~call & ~y).sum())
    out = {"threshold": float(threshold), "tp": tp, "fn": fn, "fp": fp, "tn": tn}
    for name, k, n in [("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn), ("accuracy", tp + tn, tp + tn + fp + fn)]:
        lo, hi = wilson(k, n, level=level)
        out[name] = k / n if n else float("nan")
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = lo, hi
    return out


def calibration(y: np.ndarray, p: np.ndarray, *, bins: int = 10) -> dict:
    """Reliability bins (equal width over [0, 1]) and the Brier score of probabilities p of the positive class."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "mean_predicted": float(p[sel].mean()),
                         "observed": float(y[sel].mean()), "count": int(sel.sum())})
    return {"bins": rows, "brier": float(np.mean((p - y) ** 2))}


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * eta))  # no overflow for extreme eta, unlike 1 / (1 + exp(-eta))


def _logistic_fit(y: np.ndarray, x: np.ndarray | None, offset: np.ndarray, *, iterations: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood logistic regression of y on [1, x] (or the intercept alone) with an offset, by Newton-Raphson;
    returns the coefficients and their standard errors (inverse Fisher information), or NaNs where the fit does not
    converge (perfectly separated classes have no finite maximum). Small enough to need no library."""
    X = np.ones((len(y), 1)) if x is None else np.column_stack([np.ones(len(y)), x])
    beta = np.zeros(X.shape[1])
    nan = np.full(X.shape[1], np.nan)
    for _ in range(iterations):
        mu = _sigmoid(offset + X @ beta)
        info = X.T @ (X * np.clip(mu * (1 - mu), 1e-12, None)[:, None])
        try:
            step = np.linalg.solve(info, X.T @ (y - mu))
        except np.linalg.LinAlgError:
            return nan, nan
        beta = beta + step
        if not np.isfinite(beta).all():
            return nan, nan
        if np.max(np.abs(step)) < 1e-10:
            break
    else:
        return nan, nan
    mu = _sigmoid(offset + X @ beta)
    info = X.T @ (X * np.clip(mu * (1 - mu), 1e-12, None)[:, None])
    return beta, np.sqrt(np.diag(np.linalg.inv(info)))


def calibration_fit(y: np.ndarray, p: np.ndarray, *, level: float = 0.95) -> dict:
    """Logistic recalibration (Cox 1958; Van Calster et al. 2019, J Clin Epidemiol 110:12): the calibration slope is b in
    logit P(y) = a + b logit(p) (1 = ideal, < 1 = probabilities too extreme); the calibration intercept
    ("calibration-in-the-large") is a in logit P(y) = a + logit(p), the slope fixed at 1 (0 = ideal, < 0 = too high on
    average). Wald intervals. With the Brier score. Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)
    out = {"brier": float(np.mean((p - y) ** 2))}
    keys = ("calibration_intercept", "calibration_slope")
    if len(y) < 3 or y.min() == y.max():  # one class only: no fit
        return {**out, **{f"{k}{s}": float("nan") for k in keys for s in ("", "_ci_low", "_ci_high")}}
    z = _z(level)
    logit = np.log(p / (1 - p))
    (a,), (se_a,) = _logistic_fit(y, None, logit)
    (_, b), (_, se_b) = _logistic_fit(y, logit, np.zeros(len(y)))
    for key, value, se in (("calibration_intercept", a, se_a), ("calibration_slope", b, se_b)):
        out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(value), float(value - z * se), float(value + z * se)
    return out


def decision_curve(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray | None = None) -> list[dict]:
    """Net benefit against threshold probability (Vickers & Elkin 2006, Med Decis Making 26:565): for calling positive
    at p >= pt, TP/n - FP/n x pt/(1 - pt); treating everyone, prevalence - (1 - prevalence) x pt/(1 - pt); treating
    no one, 0. The threshold probability is where a clinician would weigh a missed case against unneeded treatment."""
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=float)
    n = len(y)
    thresholds = np.round(np.arange(0.01, 1.0, 0.01), 2) if thresholds is None else np.asarray(thresholds, dtype=float)
    prevalence = float(y.mean()) if n else float("nan")
    rows = []
    for t in thresholds:
        call = p >= t
        odds = t / (1 - t)
        tp, fp = int((call & y).sum()), int((call & ~y).sum())
        rows.append({"threshold": float(t), "net_benefit": tp / n - fp / n * odds if n else float("nan"),
                     "net_benefit_treat_all": prevalence - (1 - prevalence) * odds})
    return rows


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


@dataclass(frozen=True)
class CorrectedTTest:
    """Nadeau-Bengio corrected resampled t-test of paired per-fold differences."""

    mean_difference: float
    t: float
    df: int
    p: float  # two-sided
    n: int  # differences (repeats x folds)


def corrected_resampled_ttest(a: np.ndarray, b: np.ndarray, *, n_train: float, n_test: float) -> CorrectedTTest:
    """Compare two models scored on the same R x k cross-validation folds (fold i of one against fold i of the other).

    Why not a paired t-test: the folds' training sets overlap, so their scores are correlated and the
    ordinary variance estimate is too small (Dietterich 1998; its type I error reaches 0.3). Nadeau and
    Bengio (2003, Machine Learning 52:239) correct the variance by the test/train size ratio:
    t = mean(d) / sqrt((1/n + n_test/n_train) * var(d)), with n - 1 degrees of freedom; Bouckaert and
    Frank (2004) apply it to repeated k-fold cross-validation with n = R x k.
    """
    from scipy.special import stdtr  # here only: the t distribution, for this test alone

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return CorrectedTTest(float(d.mean()) if n else float("nan"), float("nan"), max(n - 1, 0), float("nan"), n)
    mean, var = float(d.mean()), float(d.var(ddof=1))
    if var == 0:
        return CorrectedTTest(mean, float("inf") if mean else float("nan"), n - 1, 0.0 if mean else 1.0, n)
    t = mean / math.sqrt((1 / n + n_test / n_train) * var)
    return CorrectedTTest(mean, t, n - 1, float(2 * stdtr(n - 1, -abs(t))), n)
