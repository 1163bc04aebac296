"""Train: choose a preset, adjust any setting, start a run in the background and watch it train."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path

import streamlit as st

from core import CxrError
from core import figures
from core.config import PRESETS, RunConfig, apply_overrides, preset
from core.dashboard import job_progress
from core.jobs import cancel, start_run

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
DEMO_DIR = os.environ.get("CXR_DEMO_DIR", "data/demo")

st.set_page_config(page_title="Train · cxr-transfer", layout="wide")
st.title("Train")

name = st.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("quick"), key="train_preset",
                    help="paper: the study's protocol (ResNet-50, 224 px, 10 folds, 250 iterations). quick: a 2-core CPU demo.")
base = preset(name)
with st.form("train_form"):
    data = st.text_input("Data set", DEMO_DIR, help=RunConfig.__dataclass_fields__["data"].metadata["help"], key="train_data")
    values = {}
    cols = st.columns(3)
    for k, f in enumerate(x for x in fields(RunConfig) if x.name != "data"):
        col, value, meta = cols[k % 3], getattr(base, f.name), f.metadata
        key = f"train_{name}_{f.name}"
        if f.type == "bool":
            values[f.name] = col.checkbox(f.name, value, help=meta["help"], key=key)
        elif "choices" in meta:
            values[f.name] = col.selectbox(f.name, meta["choices"], index=meta["choices"].index(value), help=meta["help"], key=key)
        elif f.type == "int":
            values[f.name] = col.number_input(f.name, value=value, step=1, help=meta["help"], key=key)
        elif f.type == "float":
            values[f.name] = col.number_input(f.name, value=float(value), format="%g", help=meta["help"], key=key)
        else:
            values[f.name] = col.text_input(f.name, value, help=meta["help"], key=key)
    submitted = st.form_submit_button("Start run")

if submitted:
    try:
        cfg = apply_overrides(base, [f"data={data}"] + [f"{k}={v}" for k, v in values.items() if v != asdict(base)[k]])
        run_id, _ = start_run(cfg, runs_dir=RUNS_DIR, preset=name)
        st.session_state["train_job"] = run_id
    except CxrError as exc:
        st.error(str(exc))


@st.fragment(run_every=2)
def live(run_id: str) -> None:
    p = job_progress(RUNS_DIR, run_id)
    st.subheader(f"Run {run_id}: {p['status']}")
    if p["status"] == "starting":
        st.caption("Reading the data set and checking weights...")
        if p["log"]:
            st.code(p["log"])
        return
    label = f"{p['done']} of {p['total']} iterations" if p["total"] else f"{p['done']} iterations"
    eta = f", about {p['eta_s']:.0f} s left" if p["eta_s"] else ""
    st.progress(p["fraction"], text=f"{label}, {p['folds_done']} folds finished, {p['elapsed_s']:.0f} s training{eta}")
    if p["status"] == "running" and st.button("Cancel run", key="train_cancel"):
        cancel(RUNS_DIR, run_id)
    if p["status"] in ("failed", "interrupted"):
        st.error(p["error"] or "the run's process ended without finishing; finished folds are kept")
    if not p["curve"].empty:
        left, right = st.columns(2)
        left.plotly_chart(figures.training_curves(p["curve"], metric="accuracy"), width="stretch")
        right.plotly_chart(figures.training_curves(p["curve"], metric="loss"), width="stretch")


if "train_job" in st.session_state:
    live(st.session_state["train_job"])
