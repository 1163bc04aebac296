"""Compare: two or more runs, or a sweep, in the study's Table 3 layout with intervals, DeLong p-values and overlaid ROC curves.

Finished runs do not change, so a comparison is computed once per choice of runs (and their labels, which
carry the names) and kept; the curves' measure is a fragment that reruns alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core import CxrError
from core.results import figures
from core.dashboard import comparison
from pages import page_setup
from pages.ui import display
from pages.ui.cached import finished_runs, sweep_runs, sweeps as sweep_options

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

@st.cache_data(max_entries=16, show_spinner="Comparing the runs...")
def compare(runs_dir: str, run_ids: tuple[str, ...], labels: tuple) -> dict:
    """`labels`: the runs' names and metrics as listed, so a renamed run is compared afresh."""
    return comparison(Path(runs_dir), list(run_ids))


@st.fragment
def curves_section(training) -> None:
    st.subheader("Training curves")
    metric = st.radio("Measure", ["loss", "accuracy"], horizontal=True, key="compare_metric")
    st.plotly_chart(figures.training_curves_overlay(training, metric=metric), width="stretch")


page_setup("Compare")
st.title("Compare runs")

runs = finished_runs(RUNS_DIR)
sweeps = sweep_options(RUNS_DIR)
mode = st.radio("Compare", ["a sweep", "chosen runs"] if sweeps else ["chosen runs"], horizontal=True, key="compare_mode")
if mode == "a sweep":
    sweep_id = st.selectbox("Sweep", list(sweeps), format_func=sweeps.get, key="compare_sweep")
    run_ids = sweep_runs(RUNS_DIR, sweep_id)
else:
    run_ids = st.multiselect("Runs (the first is the reference row)", list(runs), format_func=runs.get, key="compare_runs")
if len(run_ids) < 2:
    st.info("Choose at least two finished runs (or a sweep) to compare.")
    st.stop()
try:
    c = compare(str(RUNS_DIR), tuple(run_ids), tuple(runs.get(r) for r in run_ids))
except CxrError as exc:
    st.error(str(exc))
    st.stop()

if any(r["synthetic"] for r in c["rows"]):
    st.warning("Data: SYNTHETIC demo phantom images, not real radiographs.")
st.subheader("Table 3")
st.caption("Pooled out-of-fold predictions; Wilson intervals for proportions, DeLong for AUC; "
           "p: paired DeLong test against the first row on the same images, Holm-adjusted.")
table = c["table"].set_index("run")
key_columns = display.table3_key_columns(table.columns, c["varies"])
st.dataframe(table[key_columns].style.set_properties(subset=c["varies"], **display.HIGHLIGHT) if c["varies"] else table[key_columns],
             width="stretch")
if any("repeats_summary" in r for r in c["rows"]):
    st.markdown("**Over repeated cross-validation**")
    st.dataframe(display.repeats_compare_table(c["rows"]), hide_index=True, width="stretch")
    st.caption("Repeated cross-validation: the figures are each run's first repeat; 'over repeats' is the spread of the pooled AUC "
               "over its repeats (a new split each). Corrected t-test: Nadeau-Bengio corrected resampled t-test of the per-fold AUC "
               "differences over every repeat's folds, for runs that share their splits (a sweep's runs do); it allows for the "
               "overlap of training sets that makes a plain paired t-test too confident.")
if c["varies"]:
    st.caption(f"Settings that differ between these runs (highlighted): {', '.join(c['varies'])}. "
               "Settings that change no result (save_models, device, threads, ...) are not counted.")
with st.expander("All columns of Table 3 (accuracy, per-fold AUC, training time, localisation)"):
    st.dataframe(table, width="stretch")
if mode == "a sweep" and c["varies"]:
    st.plotly_chart(figures.sweep_parallel(c["rows"], c["varies"]), width="stretch")

validated = [r for r in c["rows"] if r["external"]]
if validated:  # internal (out of fold) and external results of each run, side by side
    st.subheader("External validation")
    st.caption("Each run's fold models on other data sets with the same classes, beside its own out-of-fold result; p: unpaired "
               "DeLong test of the external AUC against the internal one.")
    for r in validated:
        st.markdown(f"**{r['name']}**")
        st.dataframe(display.external_table(r), hide_index=True, width="stretch")

left, right = st.columns(2)
left.plotly_chart(figures.roc_overlay(c["curves"]), width="stretch")
right.plotly_chart(figures.accuracy_vs_time(c["rows"]), width="stretch")

curves_section(c["training"])

st.subheader("Confusion matrices")
cols = st.columns(2)
for k, r in enumerate(c["rows"]):
    m = r["confusion"]
    fig = figures.confusion_matlab(m["tp"], m["fn"], m["fp"], m["tn"], positive=r["positive_class"], negative=r["negative_class"],
                                   title_prefix=f"{r['name']}: ")
    event = cols[k % 2].plotly_chart(fig, width="stretch",
                                     on_select="rerun", selection_mode="points", key=f"compare_confusion_{r['run_id']}")
    picked = [pt["customdata"] for pt in (event.selection.points if event else []) if pt.get("customdata")]
    if picked:  # those images in the gallery, with every compared run side by side
        st.session_state["cam_request"] = {"run": r["run_id"], "outcomes": picked, "others": [x for x in run_ids if x != r["run_id"]]}
        st.switch_page("pages/4_Grad-CAM.py")
st.caption("Click a cell of a confusion matrix to see those images in the Grad-CAM gallery, next to the other runs' heat maps.")
