"""Home page: what the tool does, the demo data set, and the runs in the store."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.dashboard import demo_summary, make_demo, runs_table

DEMO_DIR = Path(os.environ.get("CXR_DEMO_DIR", "data/demo"))
RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

st.set_page_config(page_title="cxr-transfer", page_icon="🫁", layout="wide")
st.title("cxr-transfer")
st.write(
    "Fine-tune ImageNet CNNs on chest radiographs with k-fold cross-validation, as in the published "
    "MATLAB study (ResNet-50, pleural effusion vs normal), and explore the results."
)

st.subheader("Demo data")
summary = demo_summary(DEMO_DIR)
if summary is None:
    st.info(f"No demo data at `{DEMO_DIR}` yet.")
    if st.button("Create demo data", key="home_make_demo"):
        with st.spinner("Drawing synthetic chest radiographs..."):
            make_demo(DEMO_DIR)
        st.rerun()
else:
    st.caption("SYNTHETIC phantom images made by cxr-transfer, not real radiographs.")
    cols = st.columns(len(summary["per_class"]) + 1)
    cols[0].metric("Patients", summary["patients"])
    for col, (label, count) in zip(cols[1:], summary["per_class"].items()):
        col.metric(label, count)
    st.code(f"python -m core run --preset quick --data {DEMO_DIR}", language="bash")

st.subheader("Runs")
runs = runs_table(RUNS_DIR)
if runs.empty:
    st.info("No runs yet. Start one from the command line (above); it appears here when it starts.")
else:
    st.dataframe(runs, hide_index=True, width="stretch")
