"""Grad-CAM gallery: where the model looked, by outcome and confidence, the original beside the overlay."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.dashboard import gallery, run_detail, run_options
from core.overlay import mask_outline, overlay

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

st.set_page_config(page_title="Grad-CAM · cxr-transfer", layout="wide")
st.title("Grad-CAM gallery")

options = run_options(RUNS_DIR)
if not options:
    st.info("No finished run yet. Start one: `python -m core run --preset quick --data data/demo`.")
    st.stop()
run_id = st.selectbox("Run", list(options), format_func=options.get, key="cam_run")
c1, c2, c3, c4 = st.columns(4)
outcomes = c1.multiselect("Outcome", ["TP", "FP", "FN", "TN"], default=["TP", "FP", "FN", "TN"], key="cam_outcomes",
                          help="TP/FN: positive images called positive/negative; FP/TN: negative images called positive/negative.")
target = c2.radio("Heat map for", ["predicted", "positive"], key="cam_target",
                  format_func=lambda t: "the predicted class" if t == "predicted" else "the positive class")
opacity = c3.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
limit = c4.number_input("Images", 4, 96, 12, 4, key="cam_limit")

try:
    detail = run_detail(RUNS_DIR, run_id)
    items = gallery(RUNS_DIR, run_id, outcomes=outcomes, target=target, limit=int(limit))
except CxrError as exc:
    st.error(str(exc))
    st.stop()
row = detail["row"]
if row["synthetic"]:
    st.warning("SYNTHETIC demo phantom images, not real radiographs. Research tool, not a diagnosis.")
if "pointing_game" in row:
    st.caption(f"Localisation over positives with masks: pointing game {100 * row['pointing_game']:.0f} % "
               f"(chance {100 * row['pointing_chance']:.0f} %), heat-map energy in mask {100 * row['energy_in_mask']:.1f} % "
               f"(chance {100 * row['energy_chance']:.1f} %). Map: {detail['config']['backbone']} last block, "
               f"{max(1, detail['config']['image_size'] // 32)} x {max(1, detail['config']['image_size'] // 32)} cells.")
if not items:
    st.info("No heat maps for this choice (the run may have been made with gradcam=false).")
    st.stop()

st.caption("Sorted by confidence (distance of the probability from 0.5). Mask outline in white where the data set has masks.")
per_row = 3
for start in range(0, len(items), per_row):
    cols = st.columns(per_row * 2)
    for k, item in enumerate(items[start : start + per_row]):
        picture = overlay(item["gray"], item["cam"], opacity=opacity)
        if item["mask"] is not None:
            picture[mask_outline(item["mask"])] = 255
        verdict = "" if item["pointing_hit"] is None else (" · points at lesion" if item["pointing_hit"] else " · misses lesion")
        caption = f"{item['outcome']} · p(positive) {item['prob_positive']:.2f} · fold {item['fold'] + 1}{verdict}"
        cols[2 * k].image(item["gray"], caption=item["image_id"] + (f" ({item['note']})" if item["note"] else ""), width="stretch")
        cols[2 * k + 1].image(picture, caption=caption, width="stretch")
