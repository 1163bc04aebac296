"""Grad-CAM gallery: where the model looked, by outcome and confidence, the original beside the overlay.

Other pages open it on a chosen run and outcome (a click on a confusion-matrix cell) by leaving
a `cam_request` in the session; several runs can be shown side by side on the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.config import heat_map_text
from core.dashboard import cams_for, gallery
from core.results.overlay import COLOUR_BAR_CAPTION, colour_bar, mask_outline, overlay
from pages import page_setup
from pages.ui.cached import finished_runs_or_stop, run_record

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
OUTCOMES = ["TP", "FP", "FN", "TN"]

page_setup("Grad-CAM")
st.title("Grad-CAM gallery")

options = finished_runs_or_stop(RUNS_DIR)
request = st.session_state.pop("cam_request", None)
if request and request.get("run") in options:  # opened from a confusion-matrix cell on Runs or Compare
    st.session_state["cam_run"] = request["run"]
    st.session_state["cam_outcomes"] = [o for o in request.get("outcomes", OUTCOMES) if o in OUTCOMES]
    st.session_state["cam_others"] = [r for r in request.get("others", []) if r in options and r != request["run"]]
st.session_state.setdefault("cam_outcomes", OUTCOMES)

run_id = st.selectbox("Run", list(options), format_func=options.get, key="cam_run")
c1, c2, c3, c4 = st.columns(4)
outcomes = c1.multiselect("Outcome", OUTCOMES, key="cam_outcomes",
                          help="TP/FN: positive images called positive/negative; FP/TN: negative images called positive/negative.")
target = c2.radio("Heat map for", ["predicted", "positive"], key="cam_target",
                  format_func=lambda t: "the predicted class" if t == "predicted" else "the positive class")
opacity = c3.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
limit = c4.number_input("Images", 4, 96, 12, 4, key="cam_limit")
o1, o2 = st.columns([3, 1])
others = o1.multiselect("Show the same images in other runs, side by side", [r for r in options if r != run_id],
                        format_func=options.get, key="cam_others",
                        help="Each row: the original, then this run's heat map, then each chosen run's heat map of the same image.")
# Two pairs a row by default: at three (six pictures across) a basal effusion was a few pixels high on a laptop screen.
per_row = o2.radio("Images per row", [1, 2, 3], index=1, horizontal=True, key="cam_per_row",
                   help="1 shows each original and its heat map at full width (the enlarged view). Any picture also opens full "
                        "screen from the button that appears when the pointer is over it.")

try:
    record = run_record(RUNS_DIR, run_id)  # one query: the gallery needs no ROC or statistics
    items = gallery(RUNS_DIR, run_id, outcomes=outcomes, target=target, limit=int(limit))
    across = {other: cams_for(RUNS_DIR, other, [i["image_id"] for i in items], target=target) for other in others}
except CxrError as exc:
    st.error(str(exc))
    st.stop()
if record.synthetic:
    st.warning("SYNTHETIC demo phantom images, not real radiographs. Research tool, not a diagnosis.")
if record.pointing_game is not None:
    st.caption(f"Localisation over positives with masks: pointing game {100 * record.pointing_game:.0f} % "
               f"(chance {100 * (record.pointing_chance or 0):.0f} %), heat-map energy in mask {100 * (record.energy_in_mask or 0):.1f} % "
               f"(chance {100 * (record.energy_chance or 0):.1f} %). Maps: {heat_map_text(record.config)}.")
if not items:
    st.info("No heat maps for this choice (the run may have been made with gradcam=false).")
    st.stop()


def picture(gray, cam, mask):
    out = overlay(gray, cam, opacity=opacity)
    if mask is not None:
        out[mask_outline(mask)] = 255
    return out


st.caption("Sorted by confidence (distance of the probability from 0.5). Mask outline in white where the data set has masks. "
           "The button at a picture's corner (shown under the pointer) opens it full screen.")
scale, _ = st.columns([1, 2])
scale.image(colour_bar(), width="stretch")
scale.caption(COLOUR_BAR_CAPTION)
if others:
    missing = {o: sum(i["image_id"] not in across[o] for i in items) for o in others}
    for o, n in missing.items():
        if n:
            st.caption(f"{options[o]}: no heat map stored for {n} of these {len(items)} images (a run keeps at most "
                       "gradcam_max per fold; set gradcam_max=0 to keep all).")
    header = st.columns(2 + len(others))
    header[0].markdown("**original**")
    header[1].markdown(f"**{options[run_id].split(' · ')[0]}**")
    for k, o in enumerate(others):
        header[2 + k].markdown(f"**{options[o].split(' · ')[0]}**")
    for item in items:
        cols = st.columns(2 + len(others))
        cols[0].image(item["gray"], caption=item["image_id"], width="stretch")
        cols[1].image(picture(item["gray"], item["cam"], item["mask"]),
                      caption=f"{item['outcome']} · p {item['prob_positive']:.2f}", width="stretch")
        for k, o in enumerate(others):
            other = across[o].get(item["image_id"])
            if other is None:
                cols[2 + k].caption("no heat map stored for this image")
            else:
                cols[2 + k].image(picture(item["gray"], other["cam"], item["mask"]),
                                  caption=f"{other['outcome']} · p {other['prob_positive']:.2f}", width="stretch")
    st.stop()

for start in range(0, len(items), per_row):
    cols = st.columns(per_row * 2)
    for k, item in enumerate(items[start : start + per_row]):
        verdict = "" if item["pointing_hit"] is None else (" · points at lesion" if item["pointing_hit"] else " · misses lesion")
        caption = f"{item['outcome']} · p(positive) {item['prob_positive']:.2f} · fold {item['fold'] + 1}{verdict}"
        cols[2 * k].image(item["gray"], caption=item["image_id"] + (f" ({item['note']})" if item["note"] else ""), width="stretch")
        cols[2 * k + 1].image(picture(item["gray"], item["cam"], item["mask"]), caption=caption, width="stretch")
