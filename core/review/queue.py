"""The review queue: a run's false negatives, false positives and least confident cases, for reviewers to tag.

A reviewer looking through a model's misses says what they are (a label error, a subtle finding, a support device
over the base, ...): the failure analysis that reporting guidelines ask for (CLAIM 2024 item 39). Tags are stored
per reviewer (several may tag the same case; a reviewer's second tag replaces their first). Cases tagged
`label error` can be left out of the next run on the same data (`exclude_label_errors=true`), counted in its
data flow with the reason.
"""

from __future__ import annotations

import io

import pandas as pd

from core import CxrError
from core.results.clinicians import TAGS
from core.results.store import Store
from core.safety import refuse_in_demo_mode

KINDS = {"FN": "false negatives", "FP": "false positives", "uncertain": "least confident"}
MAX_NOTE = 500  # characters: a note, not a report


def review_cases(store: Store, run_id: str, *, kinds: list[str], threshold: float = 0.5, limit: int = 24) -> pd.DataFrame:
    """The run's cases of the chosen kinds, each with its truth, out-of-fold probability and the tags given so far.

    False negatives and false positives come most confident first (the model's worst misses); the least confident
    are those nearest the threshold, of either class. Columns: image_id, kind, truth (bool), prob_positive,
    distance (from the threshold), tags (list of (reviewer, tag, note)).
    """
    run = store.run_record(run_id)
    preds = store.scored(run)
    if preds.empty:
        return pd.DataFrame(columns=["image_id", "kind", "truth", "prob_positive", "distance", "tags"])
    truth = preds["label_index"].to_numpy() == run.positive_index
    p = preds["prob_positive"].to_numpy(dtype=float)
    frame = pd.DataFrame({"image_id": preds["image_id"], "truth": truth, "prob_positive": p, "distance": abs(p - threshold)})
    frame["kind"] = "TP/TN"
    frame.loc[frame["truth"] & (p < threshold), "kind"] = "FN"
    frame.loc[~frame["truth"] & (p >= threshold), "kind"] = "FP"
    parts = []
    for kind in kinds:
        if kind not in KINDS:
            raise CxrError(f"unknown case kind {kind!r}; choose from {', '.join(KINDS)}")
        if kind == "uncertain":
            part = frame.sort_values(["distance", "image_id"]).head(limit).assign(kind="uncertain")
        else:
            part = frame[frame["kind"] == kind].sort_values(["distance", "image_id"], ascending=[False, True]).head(limit)
        parts.append(part)
    cases = pd.concat(parts).drop_duplicates("image_id") if parts else frame.head(0)
    tags = store.tags(run_id)
    given = {i: list(zip(g["reviewer"], g["tag"], g["note"])) for i, g in tags.groupby("image_id")} if not tags.empty else {}
    cases["tags"] = [given.get(i, []) for i in cases["image_id"]]
    return cases.reset_index(drop=True)


def save_tag(store: Store, run_id: str, image_id: str, *, reviewer: str, tag: str, note: str = "") -> None:
    """Validate and store one reviewer's tag of one case."""
    refuse_in_demo_mode("tagging")
    reviewer = " ".join(reviewer.split())
    if not reviewer:
        raise CxrError("name the reviewer first (a name or initials): tags are stored with who gave them")
    if len(reviewer) > 80:
        raise CxrError("the reviewer's name is longer than 80 characters; use a name or initials")
    if tag not in TAGS:
        raise CxrError(f"unknown tag {tag!r}; choose one of: {', '.join(TAGS)}")
    if len(note) > MAX_NOTE:
        raise CxrError(f"the note has {len(note)} characters; keep it under {MAX_NOTE}")
    if store.prediction(run_id, image_id) is None:
        raise CxrError(f"run {run_id} has no out-of-fold prediction for {image_id!r}; tag the run's own cases")
    store.save_tag(run_id, image_id, reviewer, tag, note.strip())


def tags_csv(store: Store, run_id: str) -> str:
    """Every tag of the run as CSV: image_id, truth, out-of-fold probability, reviewer, tag, note, time."""
    run = store.run_record(run_id)
    tags = store.tags(run_id)
    preds = store.scored(run).set_index("image_id")
    out = tags.assign(truth=[run.positive_class if preds.loc[i, "label_index"] == run.positive_index else run.negative_class
                             for i in tags["image_id"]],
                      prob_positive=[round(float(preds.loc[i, "prob_positive"]), 6) for i in tags["image_id"]])
    buf = io.StringIO()
    out[["image_id", "truth", "prob_positive", "reviewer", "tag", "note", "tagged_at"]].to_csv(buf, index=False)
    return buf.getvalue()
