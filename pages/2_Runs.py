"""Runs: pick a finished run and read its folds, curves, confusion matrix, ROC, threshold and calibration.

A finished run never changes, so its detail (with a 300-sample bootstrap ROC band) is computed once per
run and kept (`st.cache_data`, keyed on the run and what can still change: status, name, tags, notes).
The threshold slider and the curve's measure live in fragments, so moving one reruns only its part.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core import CxrError
from core.results import figures
from core.dashboard import delete_run, disk_used, evaluation_ids, predictions_csv, run_detail, threshold_rates, update_run_labels
from core.jobs.launch import start_resume, start_validate
from core.results.clinicians import tag_counts
from core.results.store import Store
from core.safety import check_data_path, demo_mode
from pages import page_setup
from pages.ui import display
from pages.ui.cached import finished_runs, finished_runs_or_stop, predictable_runs, run_record, unfinished_runs

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))

@st.cache_data(max_entries=16, show_spinner="Reading the run...")
def detail(runs_dir: str, run_id: str, version: tuple) -> dict:
    """`version`: what can still change in a stored run; a new value computes the detail afresh."""
    return run_detail(Path(runs_dir), run_id)


@st.fragment
def threshold_section(d: dict, run_id: str) -> None:
    """One threshold for the confusion matrix, the ROC's operating point and the rates: moving it reruns this part alone."""
    row = d["row"]
    threshold = st.slider("Call positive when the probability is at least", 0.0, 1.0, 0.5, 0.01, key="runs_threshold",
                          help="The study calls positive at 0.5. The matrix, the marked ROC point and the table below follow this value.")
    rates = threshold_rates(d, threshold)
    left, right = st.columns(2)
    event = left.plotly_chart(figures.confusion_matlab(rates["tp"], rates["fn"], rates["fp"], rates["tn"], positive=d["positive"],
                                                       negative=d["negative"], title_prefix=f"At {threshold:.2f}: "),
                              width="stretch", on_select="rerun", selection_mode="points", key="runs_confusion")
    picked = [pt["customdata"] for pt in (event.selection.points if event else []) if pt.get("customdata")]
    left.caption("Click a cell, or a button, to see those images in the Grad-CAM gallery (whose outcomes are at 0.5, "
                 "as the heat maps were stored):")
    buttons = left.columns(4)
    for col, outcome in zip(buttons, ["TP", "FN", "FP", "TN"]):
        if col.button(outcome, key=f"runs_open_{outcome}", help=f"Open the {outcome} images in the Grad-CAM gallery", width="stretch"):
            picked = [outcome]
    if picked:  # a click on a cell (or its button) opens those images in the gallery
        st.session_state["cam_request"] = {"run": run_id, "outcomes": picked}
        st.switch_page("pages/4_Grad-CAM.py")
    chosen = {"name": "chosen threshold", **rates}
    ops = [chosen] + [p for p in row["operating_points"] if "cross-fitted" not in p["name"] and p["name"] != "0.5"]
    right.plotly_chart(figures.roc(d["roc"], auc=row["auc"], ci=(row["auc_ci_low"], row["auc_ci_high"]), points=ops), width="stretch")
    st.markdown(f"**At {threshold:.2f}** (95 % Wilson intervals)")
    st.dataframe(display.rates_table(rates), hide_index=True)


@st.fragment
def curves_section(curve: pd.DataFrame) -> None:
    st.subheader("Training curves")
    metric = st.radio("Measure", ["loss", "accuracy"], horizontal=True, key="runs_metric")
    st.plotly_chart(figures.training_curves(curve, metric=metric), width="stretch")


page_setup("Runs")
st.title("Runs")
DEMO = demo_mode()


def unfinished_section() -> None:
    """Failed, cancelled and interrupted runs, each with what stopped it and (outside demo mode) a Resume button."""
    runs = unfinished_runs(RUNS_DIR)
    if not runs:
        return
    with st.expander(f"Unfinished runs ({len(runs)})", expanded=not finished_runs(RUNS_DIR)):
        for run in runs:
            left, right = st.columns([4, 1])
            left.markdown(f"**{run['name'] or run['run_id']}** · {run['status']} · {run['folds_done']} of {run['folds']} folds finished")
            if run["error"]:
                left.caption(run["error"])
            if DEMO or not run["resumable"]:
                continue
            if right.button("Resume", key=f"runs_resume_{run['run_id']}", help="Continue from the first unfinished fold in the background"):
                try:
                    start_resume(run["run_id"], runs_dir=RUNS_DIR)
                except CxrError as exc:
                    st.error(str(exc))
                else:
                    st.session_state["train_job"] = run["run_id"]
                    st.session_state.pop("train_sweep", None)
                    st.success(f"Resuming {run['run_id']} in the background.")
                    st.page_link("pages/1_Train.py", label="Watch it train")


unfinished_section()
options = finished_runs_or_stop(RUNS_DIR)
run_id = st.selectbox("Run", list(options), format_func=options.get, key="runs_run")
try:
    record = run_record(RUNS_DIR, run_id)
    d = detail(str(RUNS_DIR), run_id, (record.status, record.name, record.tags, record.notes, evaluation_ids(RUNS_DIR, run_id)))
except CxrError as exc:
    st.error(str(exc))
    st.stop()
row, run = d["row"], d["run"]
if row["synthetic"]:
    st.warning("Data: SYNTHETIC demo phantom images, not real radiographs.")
if run.leak_status == "leaks":
    st.error(f"Leaking split (grouping was turned off for this run): {run.leakage}. Its results are optimistic.")
elif run.leak_status == "unchecked":
    st.caption(f"Patient leakage {run.leakage}.")
if run.weights_used.startswith("none"):
    st.caption(f"Weights: {run.weights_used} (trained from scratch, not transfer learning).")
st.caption(f"Computed on {run.device}; torch {run.torch_version}; code {run.code_version}.")

cols = st.columns(5)
cols[0].metric("AUC (pooled)", display.auc(row["auc"]), help=f"95 % DeLong CI {display.interval(row['auc_ci_low'], row['auc_ci_high'], 2)}")
cols[1].metric("AUC (mean of folds)", display.auc(row["auc_mean_folds"]), help=f"SD {display.pct(row['auc_sd_folds'], 2)}")
cols[2].metric("Accuracy", display.pct(row["accuracy"]))
cols[3].metric("Sensitivity", display.pct(row["sensitivity"]))
cols[4].metric("Specificity", display.pct(row["specificity"]))
st.caption("Pooled = all out-of-fold predictions in one ROC, as the study reports; the mean of per-fold AUCs is usually higher.")

st.subheader("Threshold")
threshold_section(d, run_id)

st.subheader("Folds")
st.dataframe(display.fold_table(d["folds"]), hide_index=True, width="stretch")
left, right = st.columns(2)
left.plotly_chart(figures.forest(d["folds"], pooled=row["auc"], mean=row["auc_mean_folds"]), width="stretch")
right.plotly_chart(figures.calibration_plot(row["calibration"]["bins"], brier=row["calibration"]["brier"]), width="stretch")
right.caption(figures.calibration_title(row))

if "repeats" in row:  # repeated cross-validation: how much the split alone moves the result
    spread = row["repeats_summary"]
    st.subheader(f"Repeated cross-validation ({spread['repeats']} repeats of {run.config.folds} folds)")
    st.caption(f"Every repeat splits the images anew (patients kept together) and predicts each image once. The figures above "
               f"are repeat 1's. Pooled AUC over repeats: mean {display.auc(spread['auc_mean'])}, SD {display.pct(spread['auc_sd'], 2)}, "
               f"range {display.auc(spread['auc_min'])}-{display.auc(spread['auc_max'])}. A difference between two runs smaller "
               "than this spread may be the split, not the setting: Compare's corrected t-test accounts for it.")
    left, right = st.columns(2)
    left.plotly_chart(figures.repeats_plot(row["repeats"]), width="stretch")
    right.markdown("**Each repeat at 0.5** (95 % DeLong and Wilson intervals)")
    right.dataframe(display.repeats_table(row["repeats"]), hide_index=True, width="stretch")

st.subheader("Would acting on it help?")
left, right = st.columns([3, 2])
left.plotly_chart(figures.decision_curve(row["decision_curve"]), width="stretch")
right.markdown("**Decision curve.** For each threshold probability (the risk of effusion at which a clinician would act, e.g. "
               "order an ultrasound), the net benefit of acting on the model's call: true positives per patient, minus false "
               "positives weighted by the harm of an unneeded work-up (threshold / (1 - threshold)). Where the model's curve lies "
               "above both \"treat all\" and \"treat none\", using it does more good than either default.")

st.subheader("Subgroups")
if row["subgroups"]:
    st.caption("AUC, sensitivity and specificity (at 0.5) within each subgroup of the out-of-fold predictions; p: unpaired DeLong "
               "test of the group's AUC against all other images. Groups with fewer than 5 positives or negatives are flagged, "
               "not hidden. Only bands and categories are stored or shown.")
    st.dataframe(display.subgroup_table(row["subgroups"]), hide_index=True, width="stretch")
else:
    st.caption("No subgroup variables for this data set: a CSV manifest's sex, age or age_band columns are used when present "
               "(cohort manifests have them), views when the images have one, and any column named in subgroup_columns.")

st.subheader("External validation")
if row["external"]:
    st.caption("The run's fold models (their mean probability) on other data sets with the same classes, beside its own "
               "out-of-fold result; p: unpaired DeLong test of the external AUC against the internal one. How the data "
               "differ: prevalence and views.")
    st.dataframe(display.external_table(row), hide_index=True, width="stretch")
    st.plotly_chart(figures.decision_curve(row["external"][-1]["decision_curve"],
                                           title=f"Decision curve on {row['external'][-1]['name']} (external)"), width="stretch")
if not DEMO:
    if run_id not in predictable_runs(RUNS_DIR):
        st.caption("External validation needs the run's fold models: start runs with save_models on (the Train page's default).")
    else:
        with st.form("runs_validate"):
            left, right = st.columns([3, 1])
            other = left.text_input("Validate on another data set (same classes)", key="runs_validate_data",
                                    placeholder="a demo folder, class folders or a CSV manifest",
                                    help="Every image goes through the run's fold models; none of them saw it.")
            eval_name = right.text_input("Name", key="runs_validate_name", max_chars=80, placeholder="e.g. hospital B")
            if st.form_submit_button("Start validation"):
                try:
                    check_data_path(other)
                    start_validate(run_id, other, runs_dir=RUNS_DIR, name=eval_name.strip())
                except CxrError as exc:
                    st.error(str(exc))
                else:
                    st.success("Validating in the background; the result shows here when it is stored (reload the page).")

st.subheader("Failure review")
counts = tag_counts(Store(RUNS_DIR), run_id)  # read afresh, not from the cached detail: reviewers tag while this page is open
if sum(counts.values()):
    st.caption("Cases per tag that reviewers gave to this run's misses (a case tagged alike by two reviewers counts once).")
    st.dataframe(pd.DataFrame([counts]), hide_index=True, width="stretch")
else:
    st.caption("No case of this run tagged yet.")
if st.button("Tag this run's misses on the Review page", key="runs_review"):
    st.session_state["review_run"] = run_id  # the Review page opens on this run
    st.switch_page("pages/7_Review.py")

curves_section(d["curve"])

# deferred: the file is made when the button is clicked, not on every render
st.download_button("Out-of-fold predictions (CSV)", lambda: predictions_csv(RUNS_DIR, run_id), file_name=f"{run.name}-predictions.csv",
                   mime="text/csv", key="runs_predictions_csv",
                   help="One row per image: its fold, true class, the positive class's probability and the call at 0.5 (no patient ids).")

with st.expander("Configuration"):
    st.json(d["config"])

if DEMO:  # read-only: no renaming or deleting
    st.stop()
with st.expander("Manage this run"):
    st.caption(f"Disk used by its artifacts: {disk_used(RUNS_DIR, run_id) / 1e6:.1f} MB")
    with st.form("runs_manage"):
        new_name = st.text_input("Name", run.name, key="runs_name")
        tags = st.text_input("Tags (comma-separated)", run.tags, key="runs_tags")
        notes = st.text_area("Notes", run.notes, key="runs_notes")
        if st.form_submit_button("Save"):
            update_run_labels(RUNS_DIR, run_id, name=new_name, tags=tags, notes=notes)
            st.success("Saved.")
    confirm = st.checkbox(f"Yes, delete run {run_id} with its folds, predictions and heat maps", key="runs_confirm_delete")
    if st.button("Delete run", disabled=not confirm, key="runs_delete"):
        delete_run(RUNS_DIR, run_id)
        st.success(f"Deleted {run_id}.")
        st.rerun()
