"""Train: choose a preset, adjust any setting, start a run or a sweep in the background and watch it train.

Runs are background processes (core.jobs.launch), so a page refresh or a closed tab does not stop them;
the page only reads their progress from the store.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path

import streamlit as st

from core import CxrError
from core.results import figures
from core.config import (BACKBONE_MILLION_PARAMS, NAMED_WEIGHTS, OPTIMIZERS, PRESETS, SECTIONS, RunConfig, apply_overrides,
                         ignored_by_optimizer, preset)
from core.dashboard import active_runs, job_progress, sweep_progress
from core.jobs.launch import cancel, cluster_status, start_resume, start_run, start_sweep
from core.jobs.lifecycle import UNFINISHED
from core.safety import DEMO_NOTICE, check_data_path, demo_mode
from core.training.sweep import parse_grid
from pages import page_setup
from pages.ui import display

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
DEMO_DIR = os.environ.get("CXR_DEMO_DIR", "data/demo")
FIELDS = {f.name: f for f in fields(RunConfig)}

def show_run(run_id: str, *, title: str) -> None:
    p = job_progress(RUNS_DIR, run_id)
    st.subheader(f"{title}: {p['status']}")
    if p["status"] == "starting":
        st.caption("Reading the data set and checking weights...")
        if p["log"]:
            st.code(p["log"])
        return
    label = f"{p['done']} of {p['total']} iterations" if p["total"] else f"{p['done']} iterations"
    # core.results.eta: the recent pace per iteration plus each remaining fold's evaluation and saving time
    eta = f", about {p['eta_s']:.0f} s left" if p["eta_s"] is not None else (", estimating the time left..." if p["status"] == "running" else "")
    st.progress(p["fraction"], text=f"{label}, {p['folds_done']} folds finished, {p['elapsed_s']:.0f} s training{eta}")
    if p["device"].startswith("ray:"):
        st.caption(f"On {p['device']}." + (" Folds finished on: " + "; ".join(f"fold {k} on {n}" for k, n in sorted(p["nodes"].items()))
                                          if p["nodes"] else ""))
    if p["status"] == "queued":
        st.info(f"Queued: waiting for the GPU, which run {p['gpu_holder'] or '(unknown)'} holds (one CUDA run at a time).")
    if p["status"] in ("running", "queued") and st.button("Cancel", key=f"train_cancel_{run_id}"):
        cancel(RUNS_DIR, run_id)
    if p["status"] in ("failed", "interrupted"):
        st.error(p["error"] or "the run's process ended without finishing; finished folds are kept")
    elif p["status"] == "cancelled":
        st.info("Cancelled; finished folds are kept.")
    if p["status"] in UNFINISHED and st.button("Resume", key=f"train_resume_{run_id}", type="primary",
                                                help="Continue from the first unfinished fold, with the same settings and folds"):
        try:
            start_resume(run_id, runs_dir=RUNS_DIR)
        except CxrError as exc:
            st.error(str(exc))
    if not p["curve"].empty:
        left, right = st.columns(2)
        left.plotly_chart(figures.training_curves(p["curve"], metric="accuracy"), width="stretch", key=f"acc_{run_id}")
        right.plotly_chart(figures.training_curves(p["curve"], metric="loss"), width="stretch", key=f"loss_{run_id}")


@st.fragment(run_every=2)
def live_run(run_id: str) -> None:
    show_run(run_id, title=f"Run {run_id}")


@st.fragment(run_every=2)
def live_sweep(sweep_id: str, n_runs: int) -> None:
    s = sweep_progress(RUNS_DIR, sweep_id, n_runs)
    st.subheader(f"Sweep {sweep_id}: {s['status']}, {s['done']} of {s['total']} runs finished")
    st.progress(s["done"] / s["total"], text=f"{s['done']} of {s['total']} runs")
    if not s["table"].empty:
        st.dataframe(display.sweep_table(s["table"]), hide_index=True)
    if s["status"] in ("failed", "cancelled", "interrupted") or (s["status"] == "starting" and s["log"]):
        st.code(s["log"] or "(no log)")
    if s["status"] == "finished":
        st.success(f"Sweep finished: compare its runs on the Compare page (or: python -m core report --sweep {sweep_id}).")
    if s["current"]:
        show_run(s["current"], title="Training now")


page_setup("Train")
st.title("Train")
if demo_mode():
    st.info(f"{DEMO_NOTICE} Training is not available here.")
    st.stop()

top_left, top_right = st.columns(2)
name = top_left.selectbox("Preset", list(PRESETS), index=list(PRESETS).index("quick"), key="train_preset",
                          help="paper: the study's protocol (ResNet-50, 224 px, 10 folds, 250 iterations). quick: a 2-core CPU demo.")
# Runs started here keep their fold models, so the Predict page can use them (the CLI's default stays off).
base = preset(name).replace(save_models=True)
# Outside the form so that choosing it reruns the page at once: the form then hides what this optimiser ignores.
optimizer = top_right.selectbox("Optimizer", list(OPTIMIZERS), index=list(OPTIMIZERS).index(base.optimizer), key=f"train_{name}_optimizer",
                                help=f"{FIELDS['optimizer'].metadata['help']}  \nSetting: `optimizer` (command line: `--set optimizer=...`).")
hidden = {"data", "optimizer", *ignored_by_optimizer(optimizer)}


def label_of(field_name: str) -> str:
    """A setting's label in words: 'head_lr_factor' -> 'Head lr factor' (the field's name stays in the help, for --set)."""
    words = field_name.replace("_", " ")
    return words[0].upper() + words[1:]


def field_input(col, f, value):
    """One form field for one RunConfig setting, labelled in words, with the setting's own help text and its name."""
    meta, key = f.metadata, f"train_{name}_{f.name}"
    label, help_text = label_of(f.name), f"{meta['help']}  \nSetting: `{f.name}` (command line: `--set {f.name}=...`)."
    if f.type == "bool":
        return col.checkbox(label, value, help=help_text, key=key)
    if "choices" in meta:
        return col.selectbox(label, meta["choices"], index=meta["choices"].index(value), help=help_text, key=key)
    if f.type == "int":
        return col.number_input(label, value=value, step=1, help=help_text, key=key)
    if f.type == "float":
        return col.number_input(label, value=float(value), format="%g", help=help_text, key=key)
    return col.text_input(label, value, help=help_text, key=key)


with st.form("train_form"):
    data = st.text_input("Data set", DEMO_DIR, help=FIELDS["data"].metadata["help"], key="train_data")
    run_name = st.text_input("Run name (optional)", key="train_name", max_chars=120,
                             placeholder=f"empty: named from the preset and what you change, e.g. '{name} · lr 1e-4 · seed 1'",
                             help="Shown wherever the run is listed or compared; rename it later on the Runs page.")
    per_fold = BACKBONE_MILLION_PARAMS[base.backbone] * 4  # float32 parameters
    st.caption(f"save_models is on: each fold model is kept so Predict can use the run, about {per_fold:.0f} MB per fold for "
               f"{base.backbone} ({BACKBONE_MILLION_PARAMS[base.backbone]:.1f} M parameters x 4 bytes; {per_fold * base.folds:.0f} MB "
               f"for the preset's {base.folds} folds); untick it under Execution to save the disk.")
    values = {}
    for section, names in SECTIONS.items():
        names = [n for n in names if n not in hidden]
        with st.expander(section, expanded=section in ("Model and weights", "Optimisation")):
            cols = st.columns(3)
            for k, field_name in enumerate(names):
                values[field_name] = field_input(cols[k % 3], FIELDS[field_name], getattr(base, field_name))
    grid_text = st.text_area(
        "Sweep grid (optional): one setting per line, values comma-separated", key="train_grid", height=90,
        placeholder="max_iterations=50,100,200\nlearning_rate=1e-3,1e-4",
        help="'Start sweep' runs every combination on the same folds, so the Compare page can test them pairwise (DeLong).")
    left, right = st.columns(2)
    submitted = left.form_submit_button("Start run", type="primary")
    sweep_submitted = right.form_submit_button("Start sweep")

with st.expander("Ray cluster (for executor = ray)"):
    st.caption("With executor = ray under Scale-out, every fold is a Ray task: on a private Ray instance on this machine "
               "(address empty), or on a running cluster (auto, or HOST:PORT of its head). See the README's \"Run on a cluster\".")
    address = st.text_input("Ray address", "", key="train_ray_address", max_chars=200, placeholder="empty: this machine; auto; or HOST:PORT")
    if st.button("Show the cluster", key="train_show_cluster"):
        try:
            with st.spinner("Asking Ray..."):
                c = cluster_status(address.strip())
        except CxrError as exc:
            st.error(str(exc))
        else:
            cols = st.columns(3)
            cols[0].metric("Nodes", c["nodes"], help=", ".join(c["hosts"]))
            cols[1].metric("CPUs free", f"{c['free_cpus']:g} of {c['cpus']:g}")
            cols[2].metric("GPUs free", f"{c['free_gpus']:g} of {c['gpus']:g}")

# The live view right under the Start buttons: the page keeps its scroll position after Start, so this is where
# the user is looking (above the form it appeared about 1,000 px out of sight).
with st.container():
    if "train_sweep" in st.session_state:
        live_sweep(*st.session_state["train_sweep"])
    elif "train_job" in st.session_state:
        live_run(st.session_state["train_job"])
    elif running := active_runs(RUNS_DIR):  # started from the command line, or in another browser tab
        watched = st.selectbox("Runs in progress", list(running), format_func=running.get, key="train_watch",
                               help="Runs training now, wherever they were started (here, another browser, python -m core run).")
        live_run(watched)

if submitted or sweep_submitted:
    try:
        check_data_path(data)  # typed in a browser: only under the configured data roots
        if values["weights"] not in NAMED_WEIGHTS:
            check_data_path(values["weights"])
        values["optimizer"] = optimizer
        cfg = apply_overrides(base, [f"data={data}"] + [f"{k}={v}" for k, v in values.items() if v != asdict(base)[k]])
        if sweep_submitted:
            grid = parse_grid([line for line in grid_text.splitlines() if line.strip()])
            sweep_id, _ = start_sweep(cfg, grid, runs_dir=RUNS_DIR, preset=name)
            n_runs = 1
            for v in grid.values():
                n_runs *= len(v)
            st.session_state["train_sweep"] = (sweep_id, n_runs)
            st.session_state.pop("train_job", None)
            st.rerun()
        else:
            run_id, _ = start_run(cfg, runs_dir=RUNS_DIR, preset=name, name=run_name.strip())
            st.session_state["train_job"] = run_id
            st.session_state.pop("train_sweep", None)
            st.rerun()
    except CxrError as exc:
        st.error(str(exc))
