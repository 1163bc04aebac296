"""Statistics of a reader study: clinicians' calls on a sample of a run's images, against the truth and the model.

A reader reads one image at a time and gives a call (1 = positive, 0 = negative) and a confidence 0..100 in it,
in an "unaided" session and optionally an "aided" one (the model's probability and heat map shown). "teaching"
reads are demonstrations and never enter a statistic. Every figure is computed on exactly the images the reader
read: the model's figures beside a reader's are the model on those images, not on the whole run, or the two would
not be comparable.

Per reader and session: sensitivity, specificity and accuracy with Wilson intervals, the AUC of the reader's
confidence-weighted score (`reader_score`) with DeLong's interval, and the same for the model; the reader against the
model by the paired DeLong test (AUC) and the exact McNemar test (correct calls). Per reader with both sessions: aided
against unaided on the images read in both. Pooled over readers: the same figures with reads as independent units,
which is *not* a multi-reader multi-case analysis (see POOLED_METHOD). Pure numpy and pandas, no store.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.results.stats import auc_delong, delong_paired, wilson

SESSIONS = ("unaided", "aided")  # the sessions that count, in the order they are reported
TEACHING = "teaching"
READ_COLUMNS = ("reader", "session", "image_id", "call", "confidence", "seconds")
IMAGE_COLUMNS = ("image_id", "truth", "prob_positive")
MCNEMAR_METHOD = "exact McNemar (binomial on discordant pairs)"
POOLED_METHOD = (
    "Pooled figures treat every read as an independent observation: readers and images are not modelled as random "
    "effects, so the pooled intervals and p-values are too narrow (too optimistic); no multi-reader multi-case "
    "(Obuchowski-Rockette) analysis is made. The model is counted once per read, so its figures match the readers' "
    "like for like."
)


def reader_score(call: int, confidence: float) -> float:
    """A reader's positive-ness score on 0..100, used for the reader's AUC: 50 + confidence / 2 for a positive call,
    50 - confidence / 2 for a negative one.

    Why: a call alone gives a one-point ROC curve; folding the confidence in orders the reads from a confident
    negative (0) through an unsure call of either kind (50) to a confident positive (100), so the reader has an
    ROC curve and an AUC that can be set against the model's. This is the method used for every reader AUC here.
    """
    return 50 + confidence / 2 if call else 50 - confidence / 2


def _number(x: float | None) -> float | None:
    """A plain float for JSON, or None where the value is undefined (NaN or infinite)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _has_both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


def binary_metrics(truth: np.ndarray, calls: np.ndarray, scores: np.ndarray) -> dict:
    """Sensitivity, specificity and accuracy of binary calls (Wilson 95 % intervals) and the AUC of the scores
    (DeLong 95 % interval). A rate without a denominator, or an AUC without both classes, is None with its interval,
    never NaN or 0: an absent figure must not read as a poor one."""
    y = np.asarray(truth, dtype=bool)
    call = np.asarray(calls).astype(bool)
    s = np.asarray(scores, dtype=float)
    tp, fn = int((call & y).sum()), int((~call & y).sum())
    fp, tn = int((call & ~y).sum()), int((~call & ~y).sum())
    out: dict = {"n": int(len(y)), "n_positive": int(y.sum())}
    for name, k, n in [("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("accuracy", tp + tn, len(y))]:
        low, high = wilson(k, n) if n else (None, None)
        out[name] = k / n if n else None
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _number(low), _number(high)
    out["auc"] = out["auc_ci_low"] = out["auc_ci_high"] = None
    if _has_both_classes(y):
        ci = auc_delong(y, s)
        out["auc"], out["auc_ci_low"], out["auc_ci_high"] = _number(ci.auc), _number(ci.low), _number(ci.high)
    return out


def _binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly in integers (no scipy, no rounding of the terms)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test of two paired binary outcomes (here: whether each call was right).

    Only discordant pairs carry information: b = a right and b wrong, c = a wrong and b right. Under the null each
    discordant pair falls either way with probability 1/2, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2),
    and p = 1 when there is no discordant pair. Exact rather than the chi-squared form because reader studies are
    small and the discordant pairs fewer still.
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs paired outcomes, got {len(a)} and {len(b_)}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2 * _binomial_cdf_half(min(b, c), b + c))
    return {"b": b, "c": c, "p": p, "method": MCNEMAR_METHOD}


def compare(truth: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, call_a: np.ndarray, call_b: np.ndarray) -> dict:
    """Two readings of the same images (a reader against the model, or aided against unaided): their AUCs, the
    difference a - b with the paired DeLong p-value, and the exact McNemar test on whether each call was right.

    The AUC figures are None without both classes; the DeLong p-value also needs two images of each class (its
    variance is undefined with one).
    """
    y = np.asarray(truth, dtype=bool)
    right_a = np.asarray(call_a).astype(bool) == y
    right_b = np.asarray(call_b).astype(bool) == y
    test = mcnemar(right_a, right_b)
    out: dict = {"n": int(len(y)), "auc_a": None, "auc_b": None, "auc_difference": None, "delong_p": None,
                 "mcnemar_b": test["b"], "mcnemar_c": test["c"], "mcnemar_p": test["p"]}
    if not _has_both_classes(y):
        return out
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if min(int(y.sum()), int((~y).sum())) >= 2:
        paired = delong_paired(y, a, b)
        auc_a, auc_b, out["delong_p"] = paired.auc1, paired.auc2, _number(paired.p)
    else:
        auc_a, auc_b = auc_delong(y, a).auc, auc_delong(y, b).auc
    out["auc_a"], out["auc_b"], out["auc_difference"] = float(auc_a), float(auc_b), float(auc_a - auc_b)
    return out


def _check(reads: pd.DataFrame, images: pd.DataFrame) -> None:
    """Refuse input that would count a read twice, read an unknown image, or hold a call or confidence the scores
    cannot mean: each would change a figure without any sign of it in the output."""
    for frame, columns, what in ((reads, READ_COLUMNS, "reads"), (images, IMAGE_COLUMNS, "images")):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{what} lack column(s) {', '.join(missing)}")
    if images["image_id"].duplicated().any():
        dup = images.loc[images["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"image {dup!r} appears more than once in the images")
    sessions = set(reads["session"]) - {*SESSIONS, TEACHING}
    if sessions:
        raise ValueError(f"unknown session(s) {sorted(map(str, sessions))}; expected unaided, aided or teaching")
    key = ["reader", "session", "image_id"]
    duplicated = reads.duplicated(key, keep=False)
    if duplicated.any():
        first = reads.loc[duplicated, key].iloc[0]
        raise ValueError(f"duplicate reads: reader {first['reader']!r} read image {first['image_id']!r} more than once "
                         f"in the {first['session']} session ({int(duplicated.sum())} rows in all)")
    unknown = ~reads["image_id"].isin(images["image_id"])
    if unknown.any():
        names = sorted(map(str, set(reads.loc[unknown, "image_id"])))
        raise ValueError(f"{int(unknown.sum())} read(s) of image(s) not in the study's images: {', '.join(names[:5])}"
                         + (" ..." if len(names) > 5 else ""))
    if not reads["call"].isin([0, 1]).all():
        raise ValueError("a call must be 0 (negative) or 1 (positive)")
    confidence = pd.to_numeric(reads["confidence"], errors="coerce")
    if not confidence.between(0, 100).all():
        raise ValueError("a confidence must be a number from 0 to 100")


def _scored(reads: pd.DataFrame, images: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The reads joined to their images: truth, the reader's score and the model's call and score, one row per read."""
    out = reads.merge(images[list(IMAGE_COLUMNS)], on="image_id", how="left", validate="many_to_one")
    out["truth"] = out["truth"].astype(bool)
    out["call"] = out["call"].astype(int)
    out["reader_score"] = [reader_score(c, float(f)) for c, f in zip(out["call"], out["confidence"])]
    out["model_score"] = out["prob_positive"].astype(float)
    out["model_call"] = out["model_score"] >= threshold
    return out


def _reader_and_model(rows: pd.DataFrame) -> dict:
    """The reader's and the model's metrics on the same rows. Keyed reader_metrics and model_metrics, not reader and
    model: an entry's `reader` is the reader's name."""
    y = rows["truth"].to_numpy()
    return {"reader_metrics": binary_metrics(y, rows["call"].to_numpy(), rows["reader_score"].to_numpy()),
            "model_metrics": binary_metrics(y, rows["model_call"].to_numpy(), rows["model_score"].to_numpy())}


def _median(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return _number(float(v.median())) if len(v) else None


def _session_order(session: str) -> int:
    return SESSIONS.index(session)


def study_statistics(reads: pd.DataFrame, images: pd.DataFrame, *, threshold: float = 0.5) -> dict:
    """Every statistic of a reader study, JSON-serialisable (see the module docstring for what each part means).

    `reads`: reader, session (unaided | aided | teaching), image_id, call (0/1), confidence (0..100), seconds.
    `images`: image_id, truth (True = positive class), prob_positive (the model's out-of-fold probability); the
    model calls an image positive when prob_positive >= threshold. Raises ValueError on reads of unknown images
    and on duplicate (reader, session, image_id) reads.

    Returns readers (one per reader and session: reader, session, n_read, median_seconds, reader_metrics,
    model_metrics, vs_model), aided_vs_unaided (one per reader with both sessions: reader and `compare` of aided
    against unaided), pooled (one per session: session, n_read, n_readers, reader_metrics, model_metrics, method),
    teaching_reads_excluded and threshold.
    """
    _check(reads, images)
    teaching = int((reads["session"] == TEACHING).sum())
    scored = _scored(reads[reads["session"] != TEACHING], images, threshold)

    per_reader = []
    groups = scored.groupby(["reader", "session"], sort=False)
    for reader, session in sorted(groups.groups, key=lambda k: (str(k[0]), _session_order(k[1]))):
        rows = groups.get_group((reader, session))
        vs_model = compare(rows["truth"].to_numpy(), rows["reader_score"].to_numpy(), rows["model_score"].to_numpy(),
                           rows["call"].to_numpy(), rows["model_call"].to_numpy())
        per_reader.append({"reader": str(reader), "session": session, "n_read": int(len(rows)),
                           "median_seconds": _median(rows["seconds"]), **_reader_and_model(rows), "vs_model": vs_model})

    aided_vs_unaided = []
    for reader in sorted(set(scored["reader"]), key=str):
        mine = scored[scored["reader"] == reader]
        aided, unaided = mine[mine["session"] == "aided"], mine[mine["session"] == "unaided"]
        if aided.empty or unaided.empty:
            continue
        both = aided.merge(unaided, on="image_id", suffixes=("_aided", "_unaided"))  # images read in both sessions only
        result = compare(both["truth_aided"].to_numpy(), both["reader_score_aided"].to_numpy(),
                         both["reader_score_unaided"].to_numpy(), both["call_aided"].to_numpy(), both["call_unaided"].to_numpy())
        aided_vs_unaided.append({"reader": str(reader), **result})

    pooled = []
    for session in SESSIONS:
        rows = scored[scored["session"] == session]
        if rows.empty:
            continue
        pooled.append({"session": session, "n_read": int(len(rows)), "n_readers": int(rows["reader"].nunique()),
                       **_reader_and_model(rows), "method": POOLED_METHOD})

    return {"readers": per_reader, "aided_vs_unaided": aided_vs_unaided, "pooled": pooled,
            "teaching_reads_excluded": teaching, "threshold": float(threshold)}
