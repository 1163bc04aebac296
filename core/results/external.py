"""External validation results, read back: each evaluation of a run beside the run's own out-of-fold figures.

Per evaluation: images, positives and prevalence; AUC with its DeLong interval; sensitivity and specificity
(Wilson) at 0.5; calibration fit and decision curve; the subgroups of the external data; and the unpaired
DeLong test of the external AUC against the internal (out-of-fold) one: different images, so the two AUCs are
independent, z = (AUC_ext - AUC_int) / sqrt(se_ext^2 + se_int^2). How the data sets differ: prevalence and the
share of each view (the image files' own sizes are not stored, so they are not compared).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.results.stats import at_threshold, auc_delong, calibration_fit, decision_curve
from core.results.store import Store
from core.results.subgroups import subgroup_rows


def _views(levels: pd.DataFrame) -> dict[str, float]:
    view = levels[levels["variable"] == "view"] if not levels.empty else levels
    return {} if view.empty else {k: float(v) for k, v in view["level"].value_counts(normalize=True).sort_index().items()}


def external_rows(store: Store, run, y_internal: np.ndarray, s_internal: np.ndarray, internal_ids: list[str]) -> list[dict]:
    """One dict per external evaluation of `run` (JSON `external` of `report --format json`)."""
    evaluations = store.evaluations(run.run_id)
    if evaluations.empty:
        return []
    internal = auc_delong(y_internal, s_internal) if 0 < int(np.sum(y_internal)) < len(y_internal) else None
    internal_views = _views(store.subgroup_levels(run))
    out = []
    for ev in evaluations.to_dict("records"):
        preds = store.evaluation_predictions(ev["evaluation_id"])
        y = preds["label_index"].to_numpy() == run.positive_index
        s = preds["prob_positive"].to_numpy(dtype=float)
        ids = preds["image_id"].tolist()
        levels = store.dataset_levels(ev["dataset_id"], ids)
        row = {"evaluation_id": ev["evaluation_id"], "name": ev["name"], "dataset_id": ev["dataset_id"], "synthetic": bool(ev["synthetic"]),
               "n_images": len(y), "n_positive": int(y.sum()), "prevalence": float(y.mean()) if len(y) else float("nan"),
               "internal_prevalence": float(np.mean(y_internal)), "views": _views(levels), "internal_views": internal_views,
               "auc": None, "auc_ci_low": None, "auc_ci_high": None, "p_vs_internal": None}
        ext = auc_delong(y, s) if 0 < int(y.sum()) < len(y) else None
        if ext is not None:
            row.update(auc=ext.auc, auc_ci_low=ext.low, auc_ci_high=ext.high)
            if internal is not None and math.isfinite(ext.se) and math.isfinite(internal.se) and ext.se + internal.se > 0:
                z = (ext.auc - internal.auc) / math.sqrt(ext.se ** 2 + internal.se ** 2)
                row["p_vs_internal"] = math.erfc(abs(z) / math.sqrt(2))
        rates = at_threshold(y, s, 0.5)
        for key in ("sensitivity", "specificity", "accuracy"):
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = rates[key], rates[f"{key}_ci_low"], rates[f"{key}_ci_high"]
        row.update(calibration_fit(y, s))
        row["decision_curve"] = decision_curve(y, s)
        row["subgroups"] = subgroup_rows(y, s, ids, levels)
        out.append(row)
    return out
