"""Predict: one radiograph through a finished run's fold models, with the call and a Grad-CAM. A research tool, not a diagnosis.

The fold models are loaded once per run and kept (`st.cache_resource`), and each image's prediction is
kept too (`st.cache_data`), so a second image costs forward passes only, and moving the threshold or
the opacity costs nothing but drawing: the opacity slider lives in a fragment that reruns alone.
torch is imported only when a model runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.config import heat_map_text
from core.dashboard import dataset_images, held_out_prediction
from core.results.overlay import COLOUR_BAR_CAPTION, colour_bar, overlay
from pages import page_setup
from pages.ui.cached import predictable_runs, run_record

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))


@st.cache_resource(max_entries=4, show_spinner="Loading the run's fold models...")
def ensemble(runs_dir: str, run_id: str):
    """A finished run's fold models never change: one load per run and server."""
    from core.training.predict import load_ensemble
    from core.results.store import Store

    return load_ensemble(Store(Path(runs_dir)), run_id)


@st.cache_data(max_entries=64, show_spinner="Running the fold models...")
def predict(runs_dir: str, run_id: str, data: bytes):
    from core.training.predict import predict_with

    return predict_with(ensemble(runs_dir, run_id), data)


@st.fragment
def heat_map(p, how: str) -> None:
    opacity = st.slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key="predict_opacity")
    left, right = st.columns(2)
    left.image(p.gray, caption="as the model saw it", width="stretch")
    right.image(overlay(p.gray, (p.cam * 255).astype("uint8"), opacity=opacity), caption=f"Heat map for {p.positive_class}",
                width="stretch")
    right.caption(f"{how}; the mean of the fold models' maps.")
    right.image(colour_bar(), width="stretch")
    right.caption(COLOUR_BAR_CAPTION)


page_setup("Predict")
st.title("Predict")
st.warning("Research tool, not a diagnosis. Probabilities come from models trained on the run's data set only.")

runs = predictable_runs(RUNS_DIR)
if not runs:
    st.info("No finished run kept its fold models. Start one with `--set save_models=true` (or tick save_models on the Train page).")
    st.stop()
run_id = st.selectbox("Run", list(runs), format_func=runs.get, key="predict_run")
source = st.radio("Image", ["upload", "from the data set"], horizontal=True, key="predict_source")
data, held_out = None, None
if source == "upload":
    upload = st.file_uploader("PNG, JPEG or DICOM radiograph", type=["png", "jpg", "jpeg", "dcm", "dicom"], key="predict_upload",
                              help="DICOM: only the pixels are read; names, dates and ids in the header are never shown or stored.")
    if upload is not None:
        data = upload.getvalue()
else:
    images = dataset_images(RUNS_DIR, run_id)
    image_id = st.selectbox("Data-set image", list(images), key="predict_image")
    data = Path(images[image_id]).read_bytes() if image_id else None
    held_out = held_out_prediction(RUNS_DIR, run_id, image_id) if image_id else None
threshold = st.slider("Call positive at probability", 0.0, 1.0, 0.5, 0.01, key="predict_threshold")
if data is None:
    st.stop()
try:
    p = predict(str(RUNS_DIR), run_id, data)
except CxrError as exc:
    st.error(str(exc))
    st.stop()
cols = st.columns(3)
cols[0].metric(f"P({p.positive_class})", f"{p.prob_positive:.3f}", help="mean over the run's fold models")
cols[1].metric("Call", p.call_at(threshold), help=f"positive when the probability is at least {threshold:.2f}")
cols[2].metric("Fold models agree", f"{min(p.fold_probs):.2f}-{max(p.fold_probs):.2f}", help="range of the fold models' probabilities")
if held_out is not None:  # an image of the run's own data set: the honest number is the held-out fold's
    st.info(f"True label: **{held_out['true_class']}**. Out of fold: P({held_out['positive_class']}) = "
            f"**{held_out['prob_positive']:.3f}** from fold {held_out['fold'] + 1}'s model, the one that never saw this image. "
            f"The other {held_out['folds'] - 1} fold models trained on it, so the ensemble's probability above is optimistic here.")
heat_map(p, heat_map_text(run_record(RUNS_DIR, run_id).config))
