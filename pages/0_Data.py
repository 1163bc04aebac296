"""Data: choose a source, see samples per class, class balance, patients, excluded files and the fold assignment."""

from __future__ import annotations

import os
from pathlib import Path

import plotly.express as px
import streamlit as st

from core import CxrError
from core.dashboard import data_overview, fold_preview
from core.results.figures import OKABE_ITO
from core.safety import DEMO_NOTICE, check_data_path, demo_mode
from pages import page_setup

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
DEMO_DIR = os.environ.get("CXR_DEMO_DIR", "data/demo")

@st.fragment
def fold_section(d: dict) -> None:
    """The fold preview and its settings: changing them reruns this part alone (the images are not read again)."""
    st.markdown("**Fold assignment (preview)**")
    c1, c2, c3 = st.columns(3)
    folds = c1.number_input("Folds", 2, 50, 10, key="data_folds")
    seed = c2.number_input("Seed", 0, 10**6, 0, key="data_seed")
    grouped = c3.checkbox("Keep each patient in one fold", True, key="data_grouped",
                          help="Turning this off lets a patient's images sit in training and test folds: results would be optimistic.")
    preview = fold_preview(d, folds=int(folds), seed=int(seed), group_by_patient=grouped)
    how = ("your fold column" if d["user_folds"] else "grouped by patient" if d["patients"] is not None and grouped
           else "images split independently")
    st.caption(f"Split: {how}.")
    if preview["fold_error"]:
        st.error(preview["fold_error"])
    else:
        st.dataframe(preview["folds"])
    audit = preview["audit"]
    if audit is not None:  # the check the engine repeats before training
        if audit.status == "clean":
            st.success(f"Leakage audit: {audit.message}.")
        elif audit.status == "leaks":
            st.error(f"Leakage audit: {audit.message}. A run with this split refuses to start unless grouping is turned off "
                     "on purpose (group_by_patient=false); it is then marked as leaking.")
        else:
            st.warning(f"Leakage audit {audit.message}.")


page_setup("Data")
st.title("Data")

typed = not demo_mode()
if not typed:  # no typed paths: the demo data set only
    st.info(f"{DEMO_NOTICE} This page shows the demo data set.")
    kind, path = "demo", DEMO_DIR
else:
    kind = st.radio("Source", ["demo", "folders", "csv"], horizontal=True, key="data_kind",
                    format_func={"demo": "demo folder", "folders": "one sub-folder per class", "csv": "CSV manifest"}.get)
    path = st.text_input("Path", DEMO_DIR if kind == "demo" else "", key="data_path",
                         help="A folder (demo or class folders) or a .csv file under the data folders this dashboard may read "
                              "(CXR_DATA_ROOTS); CSV paths are relative to the CSV.")
options = {}
if kind == "csv":
    c1, c2, c3, c4 = st.columns(4)
    options = {"path_column": c1.text_input("Path column", "path", key="data_pathcol"),
               "label_column": c2.text_input("Label column", "label", key="data_labelcol"),
               "group_column": c3.text_input("Patient column (optional)", "", key="data_groupcol"),
               "positive_labels": c4.text_input("Positive label value(s), comma-separated (optional)", "", key="data_pos")}
    options["fold_column"] = st.text_input("Your own fold column (optional; audited for patient leakage)", "", key="data_foldcol")
if not path:
    st.info("Enter a path to look at a data set.")
    st.stop()
bar = st.progress(0.0, text="Reading images (decoded once, then cached)...")
try:
    if typed:
        check_data_path(path)
    d = data_overview(RUNS_DIR, data=path, source=kind, with_preview=False,
                      progress=lambda done, total: bar.progress(done / total, text=f"Reading images: {done} of {total}"), **options)
except CxrError as exc:
    bar.empty()
    st.error(str(exc))
    st.stop()
bar.empty()
if d["synthetic"]:
    st.warning("SYNTHETIC demo phantom images, not real radiographs.")

cols = st.columns(3)
cols[0].metric("Usable images", d["n_images"])
cols[1].metric("Patients", d["patients"] if d["patients"] is not None else "unknown")
cols[2].metric("Excluded files", len(d["excluded"]))

st.subheader("Samples")
for label, images in d["samples"].items():
    st.markdown(f"**{label}**")
    st.image(images, width=110)

left, right = st.columns(2)
fig = px.bar(d["balance"], x="class", y="images", color="class", color_discrete_sequence=OKABE_ITO,
             title="Class balance", labels={"images": "images (count)", "class": "class"})
left.plotly_chart(fig, width="stretch")
with right:
    fold_section(d)

if d["flow"] is not None:
    st.subheader("Cohort flow")
    st.caption("How the cohort was selected (written by `python -m core cohort`): images, studies and patients left after each step, "
               "and why the others left.")
    flow = d["flow"]
    st.dataframe(flow[[c for c in ["name", "n_images", "n_studies", "n_patients", "n_removed", "reason", "note"] if c in flow.columns]]
                 .rename(columns={"name": "step", "n_images": "images", "n_studies": "studies", "n_patients": "patients",
                                  "n_removed": "removed"}), hide_index=True)

st.subheader("Excluded files")
if d["excluded"].empty:
    st.caption("None: every file could be read.")
else:
    st.dataframe(d["excluded"], hide_index=True)
