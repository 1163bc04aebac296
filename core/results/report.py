"""The study's Table 3 from the store: one row per run with intervals and the DeLong p-value against the first row.

Every number is computed from the stored out-of-fold predictions (pooled, as the study);
per-fold AUCs are summarised as mean +- SD beside them.
"""

from __future__ import annotations

import dataclasses
import html
import json

import numpy as np

from core import CxrError
from core.config import RESULT_NEUTRAL
from core.results.external import external_rows
from core.results.repeats import corrected_test, repeats_of
from core.results.subgroups import subgroup_rows
from core.results.stats import (at_threshold, auc_delong, calibration, calibration_fit, decision_curve, delong_paired, holm, mean_sd, roc_band,
                        threshold_for_sensitivity, threshold_youden, wilson)
from core.results.clinicians import reader_study_summaries, tag_counts
from core.results.store import Store

IN_SAMPLE = "pooled out-of-fold predictions of this run (chosen and evaluated on the same predictions: optimistic)"
CROSS_FITTED = "for each fold, the other folds' out-of-fold predictions; applied to that fold (no image picks its own threshold)"


def operating_points(y: np.ndarray, s: np.ndarray, folds: np.ndarray, *, min_sensitivity: float = 0.9) -> list[dict]:
    """Sensitivity, specificity, PPV, NPV (Wilson intervals) at 0.5, Youden's J and 'sensitivity >= X', saying where each threshold came from."""
    points = [{"name": "0.5", "chosen_on": "fixed", **at_threshold(y, s, 0.5)}]
    rules = {"youden": threshold_youden, f"sensitivity>={min_sensitivity:g}": lambda yy, ss: threshold_for_sensitivity(yy, ss, min_sensitivity)}
    for name, rule in rules.items():
        points.append({"name": name, "chosen_on": IN_SAMPLE, **at_threshold(y, s, rule(y, s))})
        calls = np.zeros(len(y), bool)
        thresholds = []
        for k in np.unique(folds):
            rest = folds != k
            if y[rest].all() or not y[rest].any():
                continue
            t = rule(y[rest], s[rest])
            thresholds.append(t)
            calls[folds == k] = s[folds == k] >= t
        # at_threshold on 0/1 calls with threshold 0.5 scores the per-fold calls
        cross = at_threshold(y, calls.astype(float), 0.5)
        cross["threshold"] = float(np.mean(thresholds)) if thresholds else float("nan")
        points.append({"name": name + " (cross-fitted)", "chosen_on": CROSS_FITTED, **cross})
    return points


def per_fold_summary(y: np.ndarray, call: np.ndarray, folds: np.ndarray) -> dict:
    """Mean and SD over folds of accuracy, sensitivity, specificity, PPV and NPV (each fold's own rates)."""
    rates: dict[str, list[float]] = {k: [] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")}
    for k in np.unique(folds):
        yk, ck = y[folds == k], call[folds == k]
        r = at_threshold(yk, ck.astype(float), 0.5)
        for name in rates:
            rates[name].append(r[name])
    return {name: dict(zip(("mean", "sd"), mean_sd(np.array(v)))) for name, v in rates.items()}


def roc_with_band(store: Store, run_id: str, *, n_boot: int = 500, seed: int = 0) -> dict:
    """Pooled ROC with a 95 % bootstrap band that resamples whole patients when the data set has patient ids."""
    run = store.run_record(run_id)
    preds = store.scored(run)
    groups = preds["group_id"].to_numpy() if run.grouped else None
    y = preds["label_index"].to_numpy() == run.positive_index
    band = roc_band(y, preds["prob_positive"].to_numpy(dtype=float), groups=groups, n_boot=n_boot, seed=seed)
    return {k: v.tolist() for k, v in band.items()} | {"resampled": "patients" if groups is not None else "images"}


def run_row(store: Store, run_id: str, *, min_sensitivity: float = 0.9) -> tuple[dict, dict, dict]:
    """(report row, {image_id: positive probability}, {image_id: is positive}) of one run, from its stored predictions."""
    run = store.run_record(run_id)
    if run.status != "finished":
        raise CxrError(f"run {run_id} is {run.status}, not finished; report finished runs only")
    preds = store.scored(run)
    classes = list(run.classes)
    pos = run.positive_index
    y = (preds["label_index"].to_numpy() == pos)
    call = preds["pred_index"].to_numpy() == pos
    scores = preds["prob_positive"].to_numpy(dtype=float)
    ci = auc_delong(y, scores)
    row = {"run_id": run_id, "name": run.name, "n_images": int(len(preds)), "synthetic": run.synthetic,
           "auc": ci.auc, "auc_ci_low": ci.low, "auc_ci_high": ci.high}
    tp, fn = int((call & y).sum()), int((~call & y).sum())
    fp, tn = int((call & ~y).sum()), int((~call & ~y).sum())
    for name, k, n in [("accuracy", tp + tn, len(y)), ("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                       ("ppv", tp, tp + fp), ("npv", tn, tn + fn)]:
        row[name] = k / n if n else float("nan")
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = wilson(k, n)
    fold_auc = store.folds(run_id)["auc"].to_numpy(dtype=float)
    row["auc_mean_folds"], row["auc_sd_folds"] = mean_sd(fold_auc)
    row["per_fold"] = per_fold_summary(y, call, preds["fold"].to_numpy())
    row["calibration"] = calibration(y, scores)
    row.update(calibration_fit(y, scores))  # brier, calibration_intercept and _slope with their intervals
    row["decision_curve"] = decision_curve(y, scores)
    row["subgroups"] = subgroup_rows(y, scores, preds["image_id"].tolist(), store.subgroup_levels(run))
    row["external"] = external_rows(store, run, y, scores, preds["image_id"].tolist())
    if len(classes) > 2:
        from sklearn.metrics import roc_auc_score  # here only: importing sklearn (with scipy.stats) costs the first page visit about 0.9 s

        probs = np.array(store.predictions(run_id)["probs"].tolist())  # same order: by fold, then image
        labels = preds["label_index"].to_numpy()
        row["auc_one_vs_rest"] = {c: float(roc_auc_score(labels == k, probs[:, k])) for k, c in enumerate(classes) if 0 < (labels == k).sum() < len(labels)}
        row["auc_macro"] = float(np.mean(list(row["auc_one_vs_rest"].values())))
    row["train_seconds"] = float(run.train_seconds) if run.train_seconds is not None else float("nan")
    row["leak_status"], row["leakage"] = run.leak_status or "unknown", run.leakage or "not recorded (run made before the audit)"
    row["confusion"] = {"tp": tp, "fn": fn, "fp": fp, "tn": tn}
    row["config"] = dataclasses.asdict(run.config)
    row["classes"], row["positive_class"], row["negative_class"] = classes, run.positive_class, run.negative_class
    row["operating_points"] = operating_points(y, scores, preds["fold"].to_numpy(), min_sensitivity=min_sensitivity)
    repeated = repeats_of(store, run)  # repeated cross-validation: each repeat's pooled result and their spread
    if repeated is not None:
        row["repeats"], row["repeats_summary"] = repeated
    if run.pointing_game is not None:
        for key in ("pointing_game", "pointing_chance", "energy_in_mask", "energy_chance"):
            row[key] = getattr(run, key)
    row["review_tags"] = tag_counts(store, run_id)  # clinicians in the loop: what reviewers said the misses are
    row["reader_studies"] = reader_study_summaries(store, run_id)
    return row, dict(zip(preds["image_id"], scores)), dict(zip(preds["image_id"], y))


def table3(store: Store, run_ids: list[str], *, min_sensitivity: float = 0.9) -> list[dict]:
    """Rows for `run_ids` in order; `delong_p_vs_first` (paired, on the images both runs share) and its Holm adjustment."""
    if not run_ids:
        raise CxrError("no runs to report; pass run ids or --sweep ID")
    built = [run_row(store, r, min_sensitivity=min_sensitivity) for r in run_ids]
    rows = [b[0] for b in built]
    first_scores, first_truth = built[0][1], built[0][2]
    for row, scores, truth in built:
        row["varies"] = {}
        if row is rows[0]:
            row["delong_p_vs_first"] = None
            continue
        common = sorted(set(scores) & set(first_scores))
        if len(common) < 2 or any(truth[i] != first_truth[i] for i in common):
            row["delong_p_vs_first"] = None
            continue
        y = np.array([truth[i] for i in common])
        test = delong_paired(y, np.array([scores[i] for i in common]), np.array([first_scores[i] for i in common]))
        row["delong_p_vs_first"] = test.p
    for row in rows[1:]:  # over every repeat's folds, where both runs share them (corrected for overlapping training sets)
        row["corrected_test_vs_first"] = corrected_test(store, row["run_id"], rows[0]["run_id"])
        row["corrected_p_vs_first"] = row["corrected_test_vs_first"]["p"] if row["corrected_test_vs_first"] else None
    rows[0]["corrected_test_vs_first"] = rows[0]["corrected_p_vs_first"] = None
    adjusted = holm([r["delong_p_vs_first"] if r["delong_p_vs_first"] is not None else np.nan for r in rows[1:]])
    rows[0]["delong_p_holm"] = None
    for row, p in zip(rows[1:], adjusted):
        row["delong_p_holm"] = None if np.isnan(p) else float(p)
    configs = [r["config"] for r in rows]
    # only settings that change results count as differences (a run that saved its models is not "different")
    varying = sorted(k for k in configs[0] if k not in RESULT_NEUTRAL and any(c.get(k) != configs[0][k] for c in configs))
    for row in rows:
        row["varies"] = {k: row["config"][k] for k in varying}
    return rows


def sweep_run_ids(store: Store, sweep_id: str) -> list[str]:
    ids = store.sweep_finished_ids(sweep_id)
    if not ids:
        raise CxrError(f"no finished run in sweep {sweep_id!r}")
    return ids


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _with_ci(row: dict, key: str, digits: int = 1) -> str:
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{100 * row[key]:.{digits}f} ({100 * lo:.{digits}f}-{100 * hi:.{digits}f})"


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    varying = list(rows[0]["varies"])
    header = [*varying, "accuracy % (95% CI)", "sensitivity % (95% CI)", "specificity % (95% CI)", "AUC % (95% CI, DeLong)",
              "per-fold AUC % mean ± SD", "training time", "DeLong p vs first", "Holm p"]
    localised = all("pointing_game" in r for r in rows)
    if localised:
        header[-2:-2] = ["pointing game % (chance)", "CAM energy in mask % (chance)"]
    repeated = any("repeats_summary" in r for r in rows)
    corrected = any(r.get("corrected_p_vs_first") is not None for r in rows)
    if repeated:
        header.insert(header.index("training time"), "AUC % over repeats, mean ± SD (range)")
    if corrected:
        header.append("corrected t-test p vs first")
    body = []
    for r in rows:
        m, s = divmod(r["train_seconds"], 60)
        body.append([*(str(r["varies"][k]) for k in varying), _with_ci(r, "accuracy"), _with_ci(r, "sensitivity"),
                     _with_ci(r, "specificity"), _with_ci(r, "auc", 2),
                     f"{100 * r['auc_mean_folds']:.2f} ± {100 * r['auc_sd_folds']:.2f}", f"{int(m)} min {s:.0f} s",
                     _p(r["delong_p_vs_first"]), _p(r["delong_p_holm"])])
        if localised:
            body[-1][-2:-2] = [f"{100 * r['pointing_game']:.0f} ({100 * r['pointing_chance']:.0f})",
                               f"{100 * r['energy_in_mask']:.1f} ({100 * r['energy_chance']:.1f})"]
        if repeated:
            body[-1].insert(header.index("AUC % over repeats, mean ± SD (range)"), _over_repeats(r.get("repeats_summary")))
        if corrected:
            body[-1].append(_p(r.get("corrected_p_vs_first")))
    return header, body


def _over_repeats(summary: dict | None) -> str:
    if not summary:
        return "1 repeat"
    return (f"{100 * summary['auc_mean']:.2f} ± {100 * summary['auc_sd']:.2f} ({100 * summary['auc_min']:.2f}-"
            f"{100 * summary['auc_max']:.2f}; {summary['repeats']} repeats)")


def _footer(rows: list[dict]) -> str:
    note = ("Pooled out-of-fold predictions (as the study); intervals: Wilson for proportions, DeLong for AUC; "
            "p: paired DeLong test against the first row on the same images, Holm-adjusted over the comparisons.")
    if any("repeats_summary" in r for r in rows):
        note += (" Repeated cross-validation: the figures are the first repeat's; 'over repeats' is the pooled AUC of each repeat "
                 "(a new split each), its mean, SD and range.")
    if any(r.get("corrected_p_vs_first") is not None for r in rows):
        note += (" Corrected t-test: Nadeau-Bengio corrected resampled t-test of the per-fold AUC differences over every repeat's "
                 "folds (the runs share their splits), which allows for the overlap of training sets that a plain paired t-test ignores.")
    if any(r["synthetic"] for r in rows):
        note += " Data: SYNTHETIC demo phantom images, not real radiographs."
    leaking = [r["name"] for r in rows if r.get("leak_status") == "leaks"]
    if leaking:
        note += f" LEAKING SPLIT (patients in several folds, grouping turned off): {', '.join(leaking)}; those results are optimistic."
    return note


def to_markdown(rows: list[dict]) -> str:
    header, body = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", _footer(rows), "", "Operating points (threshold on the positive-class probability):", ""]
    lines += ["| run | rule | threshold | sensitivity % (95% CI) | specificity % (95% CI) | PPV % (95% CI) | NPV % (95% CI) | threshold chosen on |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for op in r["operating_points"]:
            lines.append(f"| {r['name']} | {op['name']} | {op['threshold']:.3f} | {_with_ci(op, 'sensitivity')} | "
                         f"{_with_ci(op, 'specificity')} | {_with_ci(op, 'ppv')} | {_with_ci(op, 'npv')} | {op['chosen_on']} |")
    return "\n".join(lines) + "\n"


def to_html(rows: list[dict]) -> str:
    header, body = table_cells(rows)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return (f"<!doctype html><meta charset='utf-8'><title>cxr-transfer report</title>"
            f"<table border='1' cellpadding='4'><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"
            f"<p>{html.escape(_footer(rows))}</p>\n")


def to_json(rows: list[dict]) -> str:
    def clean(v):  # NaN is not JSON: null, at any depth (subgroup rows, decision-curve points)
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    out = [clean(r) for r in rows]
    return json.dumps(out, indent=2)
