"""How well a run does in each subgroup (sex, age band, view, a site, ...), against the rest of its images.

Per variable and level: the number of images and positives; the AUC with its DeLong interval; sensitivity and
specificity with Wilson intervals at the run's threshold; and an unpaired DeLong test of the level's AUC against
the AUC of all other images (independent images: z = (AUC_level - AUC_rest) / sqrt(se_level^2 + se_rest^2)).
Groups with fewer than MIN_PER_CLASS positives or negatives are flagged `small` (their intervals are unreliable),
never dropped; a group without both classes has no AUC. Pure numpy, no store.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.results.stats import at_threshold, auc_delong

MIN_PER_CLASS = 5


def _auc(y: np.ndarray, s: np.ndarray):
    return auc_delong(y, s) if 0 < int(y.sum()) < len(y) else None


def subgroup_rows(y: np.ndarray, scores: np.ndarray, image_ids: list[str], levels: pd.DataFrame, *, threshold: float = 0.5) -> list[dict]:
    """`levels`: one row per (image_id, variable, level). Returns one dict per variable and level, in the order the
    variables come and levels sorted (JSON `subgroups` of `report --format json`)."""
    y = np.asarray(y, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    index = {image_id: k for k, image_id in enumerate(image_ids)}
    rows = []
    for variable in dict.fromkeys(levels["variable"]):
        part = levels[levels["variable"] == variable]
        for level in sorted(set(part["level"])):
            members = [index[i] for i in part.loc[part["level"] == level, "image_id"] if i in index]
            if not members:
                continue
            inside = np.zeros(len(y), bool)
            inside[members] = True
            yg, sg = y[inside], scores[inside]
            n_pos, n_neg = int(yg.sum()), int((~yg).sum())
            rates = at_threshold(yg, sg, threshold)
            row = {"variable": variable, "level": level, "n": int(inside.sum()), "n_positive": n_pos,
                   "small": n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS, "auc": None, "auc_ci_low": None, "auc_ci_high": None,
                   "p_vs_rest": None}
            for key in ("sensitivity", "specificity"):
                row[key] = None if math.isnan(rates[key]) else rates[key]
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = rates[f"{key}_ci_low"], rates[f"{key}_ci_high"]
            group = _auc(yg, sg)
            if group is not None:
                row["auc"], row["auc_ci_low"], row["auc_ci_high"] = group.auc, group.low, group.high
                rest = _auc(y[~inside], scores[~inside])
                if rest is not None and math.isfinite(group.se) and math.isfinite(rest.se) and group.se + rest.se > 0:
                    z = (group.auc - rest.auc) / math.sqrt(group.se ** 2 + rest.se ** 2)
                    row["p_vs_rest"] = math.erfc(abs(z) / math.sqrt(2))
            rows.append(row)
    return rows
