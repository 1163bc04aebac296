"""Reader study: clinicians read a run's images one at a time, without and then with the model, against the model.

A reader sees only the pixels (no file name, path, id or header) and gives a call and a confidence; the time per
image is kept. The aided session shows the model's probability and heat map before the call, the same images in
a new order, once the unaided session is complete. Teaching mode reveals the truth, the model's answer and the
heat map after each call: for demonstrations, left out of the statistics. Results per reader and pooled, against
the model on exactly the images read (core/results/readers.py), below.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import streamlit as st

from core import CxrError
from core.results.overlay import COLOUR_BAR_CAPTION, colour_bar, overlay
from core.results.store import Store
from core.review import studies
from core.safety import DEMO_NOTICE, demo_mode
from pages import page_setup
from pages.ui import display
from pages.ui.cached import NO_FINISHED_RUN, finished_runs

RUNS_DIR = Path(os.environ.get("CXR_RUNS_DIR", "runs"))
SESSION_HELP = {"unaided": "the image alone", "aided": "the model's probability and heat map shown before each call",
                "teaching": "the truth and the model's answer revealed after each call (demonstrations; not in the statistics)"}

page_setup("Reader study")
st.title("Reader study")
store = Store(RUNS_DIR)
DEMO = demo_mode()

with st.expander("New study from a finished run", expanded=store.studies().empty and not DEMO):
    runs = finished_runs(RUNS_DIR)
    if DEMO:
        st.info(f"{DEMO_NOTICE} Creating studies and reading are off here; the results of stored studies show below.")
    elif not runs:
        st.info(NO_FINISHED_RUN)
    else:
        with st.form("study_new"):
            c1, c2, c3 = st.columns([2, 1, 1])
            run_id = c1.selectbox("Run", list(runs), format_func=runs.get)
            n_images = c2.number_input("Images", 2, studies.MAX_CASES, 10, help="half of each class, drawn at random (seeded)")
            seed = c3.number_input("Seed", 0, 10_000, 0)
            name = st.text_input("Study name (optional)", max_chars=200)
            aided = st.checkbox("Aided session after the unaided one", True)
            if st.form_submit_button("Create study"):
                try:
                    st.session_state["study_id"] = studies.create_study(store, run_id, n_images=int(n_images), seed=int(seed),
                                                                        name=name, aided=aided)
                    st.success("Study created. Readers open this page, choose it and name themselves.")
                except CxrError as exc:
                    st.error(str(exc))

table = store.studies()
with st.expander("Read on another machine: export a study, import it or its reads"):
    st.caption("Export gives one file with the study's pictures, the model's answers and every read so far. On the other "
               "machine (any machine running this dashboard), import it, read, export again; importing that file here merges "
               "its reads: a read already here is kept, never counted twice.")
    if not table.empty:
        chosen = st.selectbox("Study to export", table["study_id"], format_func=dict(zip(table["study_id"], table["name"])).get,
                              key="study_export_pick")
        # deferred: the file (every picture, base64) is made when the button is clicked, not on every render
        st.download_button("Download the study file", lambda: studies.export_study(store, chosen), file_name=f"{chosen}.json",
                           mime="application/json", key="study_export")
    upload = None
    if DEMO:
        st.caption("Importing is off in read-only demo mode.")
    else:
        upload = st.file_uploader("Import a study file", type=["json"], key="study_import",
                                  help=f"At most {st.get_option('server.maxUploadSize')} MB here (the server's maxUploadSize); "
                                       "a larger file: python -m core study import FILE.")
    if upload is not None and st.session_state.get("study_imported") != upload.file_id:
        try:
            result = studies.import_study(store, upload.getvalue())
        except CxrError as exc:
            st.error(str(exc))
        else:
            st.session_state["study_imported"] = upload.file_id
            st.session_state["study_id"] = result["study_id"]
            st.success(("Study created here. " if result["created"] else "") + f"{result['new_reads']} new reads merged, "
                       f"{result['already_there']} already here (kept as they were).")
            table = store.studies()

if table.empty:
    st.info("No reader study yet: create one above (or import a study file).")
    st.stop()
labels = {r.study_id: f"{r.name} · {r.n_images} images · {r.n_reads} reads" for r in table.itertuples()}
if st.session_state.get("study_id") not in labels:
    st.session_state["study_id"] = next(iter(labels))
study_id = st.selectbox("Study", list(labels), format_func=labels.get, key="study_id")
study = store.study(study_id)
c1, c2 = st.columns([1, 2])
reader = c1.text_input("Reader (name or initials)", key="study_reader", max_chars=80)
session = c2.radio("Session", studies.SESSIONS, horizontal=True, key="study_session", format_func=str.capitalize,
                   captions=[SESSION_HELP[s] for s in studies.SESSIONS])


def reading(reader: str, session: str) -> bool:
    """One case at a time; the time runs from the moment the case is shown to the moment its call is saved.
    True while the reader still has cases to read in this session."""
    state = studies.session_state(store, study_id, reader, session)
    if state["blocked"]:
        st.info(f"The aided session is not open yet: {state['blocked']}.")
        return False
    reveal = st.session_state.get("study_reveal")
    if session == "teaching" and reveal and reveal["key"] == (study_id, reader):
        gray, cam = studies.case_pictures(store, study_id, reveal["case_id"])
        right = reveal["call"] == int(reveal["truth"])
        (st.success if right else st.error)(f"Your call: {reveal['call_name']}. Truth: **{reveal['truth_name']}**. "
                                            f"Model: P({study['positive_class']}) = {reveal['prob']:.2f}, called {reveal['model_name']}.")
        left, mid = st.columns(2)
        left.image(gray, width="stretch")
        if cam is not None:
            mid.image(overlay(gray, cam), caption=f"heat map of the {study['positive_class']} class", width="stretch")
        if st.button("Next case", key="study_next", type="primary"):
            st.session_state.pop("study_reveal")
            st.rerun()
        return True
    n = state["n_cases"]
    if state["next"] is None:
        st.success(f"{session.capitalize()} session complete: {n} of {n} cases read. Thank you.")
        return False
    case_id = state["next"]
    st.progress(len(state["done"]) / n, text=f"Case {len(state['done']) + 1} of {n}")
    shown = st.session_state.setdefault("study_shown", {})
    key = f"{study_id}|{reader}|{session}|{case_id}"
    shown.setdefault(key, time.monotonic())
    gray, cam = studies.case_pictures(store, study_id, case_id)
    cases = store.study_cases(study_id).set_index("case_id")
    prob = float(cases.loc[case_id, "prob_positive"])
    left, right = st.columns(2)
    left.image(gray, width="stretch")
    if session == "aided":
        model_call = study["positive_class"] if prob >= float(study["threshold"]) else study["negative_class"]
        right.info(f"Model: P({study['positive_class']}) = **{prob:.2f}** (calls it {model_call} at {float(study['threshold']):.2f}).")
        if cam is not None:
            right.image(overlay(gray, cam), caption=f"heat map of the {study['positive_class']} class", width="stretch")
            right.image(colour_bar(), width=256)
            right.caption(COLOUR_BAR_CAPTION)
    with (right if session != "aided" else st).form(f"study_read_{key}"):
        call_name = st.radio("Your call", [study["positive_class"], study["negative_class"]], index=None, horizontal=True)
        confidence = st.slider("Confidence in your call (0 = a guess, 100 = certain)", 0, 100, 50)
        if st.form_submit_button("Save and next", type="primary"):
            if call_name is None:
                st.error("Choose a call first.")
                return True
            call = int(call_name == study["positive_class"])
            try:
                studies.record_read(store, study_id, reader=reader, session=session, case_id=case_id, call=call,
                                    confidence=int(confidence), seconds=time.monotonic() - shown.pop(key, time.monotonic()))
            except CxrError as exc:
                st.error(str(exc))
                return True
            if session == "teaching":
                truth = bool(cases.loc[case_id, "truth"])
                st.session_state["study_reveal"] = {
                    "key": (study_id, reader), "case_id": case_id, "call": call, "call_name": call_name, "truth": truth, "prob": prob,
                    "truth_name": study["positive_class"] if truth else study["negative_class"],
                    "model_name": study["positive_class"] if prob >= float(study["threshold"]) else study["negative_class"]}
            st.rerun()
    return True


in_progress = False
if DEMO:
    pass  # nothing is written in read-only demo mode: results only
elif not " ".join(reader.split()):
    st.info("Name yourself (a name or initials) to start reading: reads are stored with who made them.")
else:
    try:
        in_progress = reading(studies.clean_reader(reader), session)
    except CxrError as exc:
        st.error(str(exc))

st.subheader("Results")
if in_progress:  # a reader must not see how they, or the model, are doing before they finish
    st.caption("Hidden while you read: they appear when this session is complete.")
    st.stop()
try:
    stats = studies.statistics(store, study_id)
except (CxrError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
if not stats["readers"]:
    st.caption("No reads yet (teaching reads are not counted).")
    st.stop()
st.caption(f"On exactly the images each reader read; the model calls positive at {stats['threshold']:.2f}. p vs model: paired "
           "DeLong test of the reader's AUC (from their calls and confidences) against the model's, and McNemar's test of the "
           f"calls. Rates and AUC in %, each with its 95 % interval (Wilson, DeLong) in brackets; median s: seconds per image. Teaching reads left out: "
           f"{stats['teaching_reads_excluded']}.")
st.dataframe(display.reader_table(stats["readers"]), hide_index=True, width="stretch")
if stats["aided_vs_unaided"]:
    st.markdown("**Aided against unaided** (the same reader, on the images read in both sessions)")
    st.dataframe(display.aided_table(stats["aided_vs_unaided"]), hide_index=True, width="stretch")
for pooled in stats["pooled"]:
    st.caption(f"Pooled {pooled['session']} ({pooled['n_readers']} reader{'s' if pooled['n_readers'] != 1 else ''}, {pooled['n_read']} reads): "
               f"AUC {display.auc(pooled['reader_metrics']['auc'])}, model {display.auc(pooled['model_metrics']['auc'])}. "
               f"{pooled['method']}")
d1, d2, d3 = st.columns(3)
d1.download_button("Reader report (JSON)", json.dumps(stats, indent=2), file_name=f"{study_id}-report.json", key="study_json")
d2.download_button("Reader report (Markdown)", studies.report_markdown(stats), file_name=f"{study_id}-report.md", key="study_md")
d3.download_button("Reader report (HTML)", studies.report_html(stats), file_name=f"{study_id}-report.html", key="study_html")
