"""What clinicians left in the store, read back for the reports and pages: review tags counted per tag, and the
statistics of reader studies.

The writing side (the review queue, creating and reading studies, study files) is core/review/, which imports this;
this module never imports core/review, so core/results keeps depending on the foundations only.
"""

from __future__ import annotations

import pandas as pd

from core.results.readers import study_statistics
from core.results.store import Store

TAGS = ("label error", "subtle finding", "support device", "positioning or technique", "artefact", "other")


def tag_counts(store: Store, run_id: str) -> dict[str, int]:
    """Cases per tag (a case tagged alike by two reviewers counts once per tag), every tag listed, zero included."""
    tags = store.tags(run_id)
    counts = tags.drop_duplicates(["image_id", "tag"])["tag"].value_counts().to_dict() if not tags.empty else {}
    return {tag: int(counts.get(tag, 0)) for tag in TAGS}


def study_report(store: Store, study_id: str) -> dict:
    """core.results.readers.study_statistics of the study's reads on its cases (teaching reads left out there), with
    the study's description under `study`: what `reader-report` prints."""
    study = store.study(study_id)
    cases = store.study_cases(study_id)
    reads = store.reads(study_id)
    images = pd.DataFrame({"image_id": cases["case_id"], "truth": cases["truth"].astype(bool), "prob_positive": cases["prob_positive"]})
    reads = reads.rename(columns={"case_id": "image_id"})[["reader", "session", "image_id", "call", "confidence", "seconds"]]
    out = study_statistics(reads, images, threshold=float(study["threshold"]))
    out["study"] = {"study_id": study_id, "name": study["name"], "run_id": study["run_id"], "n_images": int(study["n_images"]),
                    "aided": bool(study["aided"]), "positive_class": study["positive_class"], "negative_class": study["negative_class"]}
    return out


def reader_study_summaries(store: Store, run_id: str) -> list[dict]:
    """The run's reader studies that have reads, for its report: study_id, name, n_images, and `pooled` and
    `aided_vs_unaided` of `study_report` (per reader figures stay in `reader-report`)."""
    studies = store.studies()
    out = []
    for s in studies[(studies["run_id"] == run_id) & (studies["n_reads"] > 0)].itertuples():
        stats = study_report(store, s.study_id)
        out.append({"study_id": s.study_id, "name": s.name, "n_images": int(s.n_images), "pooled": stats["pooled"],
                    "aided_vs_unaided": stats["aided_vs_unaided"]})
    return out
