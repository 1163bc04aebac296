"""Export: a self-contained HTML report of a run or a comparison, to hand to clinicians (opens offline, no server)."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.results.export import comparison_report_html
from pages import page_setup
from pages.ui.cached import finished_runs_or_stop

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

page_setup("Export")
st.title("Export a report")
st.caption("One HTML file with the tables (intervals, DeLong p-values), the figures, the data summary, the configuration and "
           "Grad-CAM examples. It opens in any browser without this server or the internet.")

options = finished_runs_or_stop(RUNS_DIR)
chosen = st.multiselect("Runs (one: a run report; several: a comparison, the first is the reference)", list(options),
                        default=list(options)[:1], format_func=options.get, key="export_runs")
examples = st.slider("Grad-CAM examples per run", 0, 16, 8, 4, key="export_cams")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()
if st.button("Build report", type="primary", key="export_build"):
    with st.spinner("Building the report..."):
        try:
            st.session_state["export_html"] = (tuple(chosen), comparison_report_html(RUNS_DIR, chosen, gallery_size=examples))
        except CxrError as exc:
            st.error(str(exc))
built = st.session_state.get("export_html")
if built and list(built[0]) == chosen:
    report = built[1]
    name = f"cxr-report-{'-'.join(chosen)[:80]}.html"
    st.success(f"Report ready: {len(report) / 1e6:.1f} MB, {len(chosen)} run(s).")
    st.download_button("Download HTML report", report, file_name=name, mime="text/html", key="export_download")
