"""Review queue: a run's false negatives, false positives and least confident cases, for clinicians to tag.

Each case shows the image, its heat map (when the run stored one), the truth and the out-of-fold probability.
A reviewer, named once per browser session, tags a case from a fixed list with an optional note; several
reviewers may tag the same case. Tags can leave label errors out of the next run (`exclude_label_errors`).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.dashboard import cams_for, case_image
from core.results.clinicians import TAGS, tag_counts
from core.results.overlay import COLOUR_BAR_CAPTION, colour_bar, overlay
from core.results.store import Store
from core.review.queue import KINDS, review_cases, save_tag, tags_csv
from core.safety import demo_mode
from pages import page_setup
from pages.ui.cached import finished_runs_or_stop, run_record

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
DEMO = demo_mode()

page_setup("Review")
st.title("Review queue")
st.caption("Look through the model's misses and say what they are. Tags are stored with the reviewer's name and the time; "
           "images tagged as a label error can be left out of the next run on the same data (Train page: Exclude label errors).")

options = finished_runs_or_stop(RUNS_DIR)
c1, c2 = st.columns([2, 1])
run_id = c1.selectbox("Run", list(options), format_func=options.get, key="review_run")
reviewer = c2.text_input("Reviewer (name or initials, once per session)", key="review_reviewer", max_chars=80)
k1, k2 = st.columns([2, 1])
kinds = k1.multiselect("Cases", list(KINDS), default=["FN", "FP"], format_func=KINDS.get, key="review_kinds",
                       help="False negatives and positives, most confident first (the worst misses); the least confident are "
                            "those nearest 0.5, of either class.")
limit = k2.number_input("Cases of each kind", 1, 200, 8, key="review_limit")

store = Store(RUNS_DIR)
try:
    record = run_record(RUNS_DIR, run_id)
    cases = review_cases(store, run_id, kinds=kinds, limit=int(limit))
except CxrError as exc:
    st.error(str(exc))
    st.stop()
if record.synthetic:
    st.warning("SYNTHETIC demo phantom images, not real radiographs. Research tool, not a diagnosis.")

counts = tag_counts(store, run_id)
st.markdown("**Cases per tag so far:** " + ", ".join(f"{tag} {n}" for tag, n in counts.items()))
st.download_button("Download the tags as CSV", tags_csv(store, run_id), file_name=f"review-tags-{run_id}.csv", mime="text/csv",
                   key="review_csv", disabled=sum(counts.values()) == 0)
if cases.empty:
    st.info("No cases of this kind in this run.")
    st.stop()

maps = cams_for(RUNS_DIR, run_id, cases["image_id"].tolist(), target="positive")
if maps:
    st.image(colour_bar(), width=256)
    st.caption(f"Heat map of the {record.positive_class} class. " + COLOUR_BAR_CAPTION)
else:
    st.caption("This run stored no heat maps (gradcam off), so the cases show the image alone.")
for case in cases.itertuples():
    left, middle, right = st.columns([1, 1, 1.3])
    try:
        gray = case_image(RUNS_DIR, run_id, case.image_id)
    except CxrError as exc:
        left.warning(str(exc))
        continue
    truth = record.positive_class if case.truth else record.negative_class
    label = {"FN": "false negative", "FP": "false positive", "uncertain": "least confident"}.get(case.kind, case.kind)
    left.image(gray, caption=f"{label} · truth {truth}", width="stretch")
    if case.image_id in maps:
        middle.image(overlay(gray, maps[case.image_id]["cam"]), caption=f"P({record.positive_class}) out of fold {case.prob_positive:.3f}",
                     width="stretch")
    else:
        middle.caption(f"No heat map stored for this image. P({record.positive_class}) out of fold {case.prob_positive:.3f}.")
    if DEMO:
        right.markdown(f"**{case.image_id}**")
        right.caption("Tags so far: " + ("; ".join(f"{who}: {t}" for who, t, _ in case.tags) or "none")
                      + ". Tagging is off in read-only demo mode.")
        continue
    with right.form(f"review_form_{case.image_id}"):
        st.markdown(f"**{case.image_id}**")
        mine = next(((t, n) for who, t, n in case.tags if who == " ".join(reviewer.split())), None)
        # no default tag: a hurried "Save" must not file a label error, which can leave the image out of later runs
        tag = st.selectbox("Tag", TAGS, index=TAGS.index(mine[0]) if mine else None, placeholder="choose a tag",
                           key=f"review_tag_{case.image_id}")
        note = st.text_input("Note (optional)", value=mine[1] if mine else "", max_chars=500, key=f"review_note_{case.image_id}")
        if st.form_submit_button("Save tag"):
            try:
                if tag is None:
                    raise CxrError("choose a tag first")
                save_tag(store, run_id, case.image_id, reviewer=reviewer, tag=tag, note=note)
            except CxrError as exc:
                st.error(str(exc))
            else:
                st.session_state["review_saved"] = (case.image_id, tag)
                st.rerun()  # the counts above and the CSV include it at once
        if st.session_state.get("review_saved", ("",))[0] == case.image_id:
            st.success(f"Saved: {st.session_state['review_saved'][1]}")
        others = [f"{who}: {t}" + (f" ({n})" if n else "") for who, t, n in case.tags]
        if others:
            st.caption("Tags so far: " + "; ".join(others))
