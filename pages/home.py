"""Home page: what the tool does, the demo data set, and the runs in the store (app.py routes here by default)."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.dashboard import demo_summary, download_imagenet_weights, environment, make_demo, start_quick_demo
from core.safety import DEMO_NOTICE, demo_mode
from pages import page_setup
from pages.ui import display
from pages.ui.cached import runs_overview

DEMO_DIR = Path(os.environ.get("CXR_DEMO_DIR", "data/demo"))
RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

page_setup("Home")

st.title("cxr-transfer")
st.write(
    "Fine-tune ImageNet CNNs on chest radiographs with k-fold cross-validation, as in the published "
    "MATLAB study (ResNet-50, pleural effusion vs normal), and explore the results."
)

DEMO = demo_mode()
if DEMO:
    st.info(DEMO_NOTICE)
env = st.cache_data(ttl=60, show_spinner=False)(environment)()
cols = st.columns(2)
cols[0].markdown(f"**Device:** {'GPU ' + env['gpu'] if env['gpu'] else 'CPU only (no CUDA GPU visible)'} · torch {env['torch']}")
missing = [name for name, cached in env["imagenet_cached"].items() if not cached]
if missing:
    cols[1].warning(
        f"ImageNet weights are not available offline for: {', '.join(missing)}. The `quick` preset then trains from "
        f"scratch (and says so); the `paper` preset will not start until the file is in `{env['cache_dir']}` "
        "or a local weights file is chosen.")
    wanted = [name for name in ("resnet18", "resnet50") if name in missing]  # the quick and the paper preset's backbones
    if wanted and not DEMO and cols[1].button(f"Download ImageNet weights for {' and '.join(wanted)}", key="home_weights",
                                              help="Through torchvision's weights API into torch hub's cache, checksum checked "
                                                   "(about 45 MB for resnet18, 98 MB for resnet50). Needs internet."):
        for name in wanted:
            try:
                with st.spinner(f"Downloading the ImageNet weights of {name}..."):
                    file = download_imagenet_weights(name)
            except CxrError as exc:
                cols[1].error(str(exc))
                break
            cols[1].success(f"{name}: {file}")
        st.cache_data.clear()  # the environment summary above is cached

st.subheader("Demo data")
summary = demo_summary(DEMO_DIR)
if summary is None:
    st.info(f"No demo data at `{DEMO_DIR}` yet.")
    if not DEMO and st.button("Create demo data", key="home_make_demo"):
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
    if not DEMO and st.button("Start a quick demo run", key="home_quick_run", help="About 2.5 minutes on a 2-core CPU; runs in the background."):
        st.session_state["train_job"] = start_quick_demo(RUNS_DIR, DEMO_DIR)
        st.success(f"Started run {st.session_state['train_job']}; watch it on the Train page.")
        st.page_link("pages/1_Train.py", label="Watch it train")

st.subheader("Runs")
runs = runs_overview(RUNS_DIR)
if runs.empty:
    st.info("No runs yet. Start one from the command line (above); it appears here when it starts.")
else:
    table = display.runs_table(runs)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    text = c1.text_input("Find by name or tag", key="home_find", placeholder="e.g. baseline, lr 1e-4, demo")
    statuses = c2.multiselect("Status", sorted(table["status"].unique()), key="home_status")
    presets = c3.multiselect("Preset", sorted(table["preset"].unique()), key="home_preset")
    data = c4.multiselect("Data", sorted(table["data"].unique()), key="home_data")
    shown = display.filter_runs(table, text=text, statuses=statuses, presets=presets, data=data)
    st.caption(f"{len(shown)} of {len(table)} runs; click a column header to sort.")
    st.dataframe(shown, hide_index=True, width="stretch")
    st.download_button("Download these runs (CSV)", shown.to_csv(index=False).encode(), file_name="runs.csv", mime="text/csv",
                       key="home_runs_csv")
