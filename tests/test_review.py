"""Clinicians in the loop: review tags stored, counted, exported and acted on; reader studies created, read, moved
between machines without loss or double counting, and reported."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from core import CxrError
from core.results.store import Store
from core.review import studies
from core.results.clinicians import TAGS, tag_counts
from core.review.queue import review_cases, save_tag, tags_csv
from core.training.engine import run_cross_validation

from conftest import blob_dataset, ctrl_c_at_fold, tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    data = blob_dataset(root / "data", n_per_class=10, size=32)
    store = Store(root / "runs")
    result = run_cross_validation(tiny_config(data, folds=2, max_iterations=2), store=store)
    return store, result.run_id, data


def test_the_queue_lists_misses_most_confident_first_and_the_least_confident_nearest_the_threshold(finished):
    store, run_id, _ = finished
    preds = store.predictions(run_id)
    cases = review_cases(store, run_id, kinds=["FN", "FP", "uncertain"], limit=50)
    p = dict(zip(preds["image_id"], preds["prob_positive"]))
    for kind in ("FN", "FP"):
        part = cases[cases["kind"] == kind]
        assert (part["truth"] == (kind == "FN")).all()
        assert part["distance"].is_monotonic_decreasing  # the worst misses first
    uncertain = cases[cases["kind"] == "uncertain"]
    assert uncertain["distance"].is_monotonic_increasing
    assert all(abs(p[i] - 0.5) == pytest.approx(d) for i, d in zip(cases["image_id"], cases["distance"]))


def test_tags_are_stored_per_reviewer_counted_once_per_case_and_exported(finished):
    store, run_id, _ = finished
    a, b = store.predictions(run_id)["image_id"][:2]
    save_tag(store, run_id, a, reviewer="  Dr  A ", tag="label error", note="looks normal")
    save_tag(store, run_id, a, reviewer="Dr B", tag="label error")
    save_tag(store, run_id, b, reviewer="Dr A", tag="subtle finding")
    save_tag(store, run_id, b, reviewer="Dr A", tag="artefact")  # a reviewer's second tag replaces the first
    counts = tag_counts(store, run_id)
    assert list(counts) == list(TAGS) and counts["label error"] == 1 and counts["artefact"] == 1 and counts["subtle finding"] == 0
    tags = store.tags(run_id)
    assert set(tags["reviewer"]) == {"Dr A", "Dr B"} and len(tags) == 3
    csv = tags_csv(store, run_id).splitlines()
    assert csv[0] == "image_id,truth,prob_positive,reviewer,tag,note,tagged_at" and len(csv) == 4 and "looks normal" in "\n".join(csv)
    assert review_cases(store, run_id, kinds=["uncertain"], limit=100).set_index("image_id").loc[a, "tags"]
    # the label errors of a data set, however its path is written; each reviewer named once
    data = finished[2]
    for spelling in (str(data), os.path.relpath(data), str(data) + "/"):
        assert store.label_errors(spelling)[a] == "label error (tagged by Dr A, Dr B)"
    assert a not in store.label_errors(str(data.parent))


@pytest.mark.parametrize(("reviewer", "tag", "message"), [("", "other", "name the reviewer"), ("A", "cute", "unknown tag"),
                                                          ("A" * 81, "other", "80 characters")])
def test_bad_tags_are_refused_with_what_to_do(finished, reviewer, tag, message):
    store, run_id, _ = finished
    image_id = store.predictions(run_id)["image_id"][0]
    with pytest.raises(CxrError, match=message):
        save_tag(store, run_id, image_id, reviewer=reviewer, tag=tag)
    with pytest.raises(CxrError, match="no out-of-fold prediction"):
        save_tag(store, run_id, "nobody.png", reviewer="A", tag="other")


@pytest.mark.slow
def test_a_label_error_leaves_the_next_run_with_its_reason_in_the_data_flow(finished):
    store, run_id, data = finished
    tagged = store.predictions(run_id)["image_id"][5]
    save_tag(store, run_id, tagged, reviewer="Dr C", tag="label error")
    errors = store.label_errors(str(data))
    assert tagged in errors and "Dr C" in errors[tagged]
    kept = run_cross_validation(tiny_config(data, folds=2, max_iterations=1), store=store)
    left = run_cross_validation(tiny_config(data, folds=2, max_iterations=1, exclude_label_errors=True), store=store)
    assert tagged in set(store.predictions(kept.run_id)["image_id"])
    assert tagged not in set(store.predictions(left.run_id)["image_id"])
    images = store.images(store.run_record(left.run_id).dataset_id).set_index("image_id")
    assert images.loc[tagged, "excluded_reason"].startswith("label error (tagged by")
    assert store.run_record(left.run_id).n_images == store.run_record(kept.run_id).n_images - len(errors)


@pytest.fixture()
def study(finished):
    store, run_id, _ = finished
    return store, studies.create_study(store, run_id, n_images=8, seed=3, name="pilot")


def test_a_study_is_a_seeded_stratified_sample_under_opaque_case_ids(finished, study):
    store, study_id = study
    cases = store.study_cases(study_id)
    assert len(cases) == 8 and cases["truth"].sum() == 4  # half of each class
    assert all(c.startswith("case-") for c in cases["case_id"])
    again = studies.create_study(store, finished[1], n_images=8, seed=3)
    assert sorted(store.study_cases(again)["image_id"]) == sorted(cases["image_id"])  # the same seed draws the same images
    with pytest.raises(CxrError, match="fewer than"):
        studies.create_study(store, finished[1], n_images=400)
    payload = studies.export_study(store, study_id).decode()
    assert not any(image_id in payload for image_id in cases["image_id"])  # no image id, path or name leaves with the file
    assert "Effusion/" not in payload and "Normal/" not in payload


def read_all(store, study_id, reader, session, *, call_of=lambda truth: int(truth)):
    truth = store.study_cases(study_id).set_index("case_id")["truth"]
    while (case := studies.session_state(store, study_id, reader, session)["next"]) is not None:
        assert studies.record_read(store, study_id, reader=reader, session=session, case_id=case, call=call_of(bool(truth[case])),
                                   confidence=80, seconds=1.5)


def test_the_aided_session_opens_after_the_unaided_one_in_a_new_order(study):
    store, study_id = study
    first = studies.session_state(store, study_id, "Dr A", "aided")
    assert "unaided one is complete" in first["blocked"]
    with pytest.raises(CxrError, match="complete"):
        studies.record_read(store, study_id, reader="Dr A", session="aided", case_id="case-001", call=1, confidence=50, seconds=1)
    read_all(store, study_id, "Dr A", "unaided")
    state = studies.session_state(store, study_id, "Dr A", "aided")
    assert state["blocked"] == "" and state["order"] != studies.session_state(store, study_id, "Dr A", "unaided")["order"]
    assert sorted(state["order"]) == sorted(store.study_cases(study_id)["case_id"])
    # a second read of a case in the same session is not counted
    assert not studies.record_read(store, study_id, reader="Dr A", session="unaided", case_id="case-001", call=0, confidence=1, seconds=1)


def test_reads_travel_to_another_machine_and_back_without_loss_or_double_counting(study, tmp_path):
    store, study_id = study
    read_all(store, study_id, "Dr A", "unaided")
    elsewhere = Store(tmp_path / "elsewhere")
    first = studies.import_study(elsewhere, studies.export_study(store, study_id))
    assert first == {"study_id": study_id, "created": True, "new_reads": 8, "already_there": 0}
    gray, cam = studies.case_pictures(elsewhere, study_id, "case-001")
    assert gray.shape == (studies.DISPLAY_PX, studies.DISPLAY_PX) and cam is not None
    read_all(elsewhere, study_id, "Dr B", "unaided", call_of=lambda truth: 1)  # another reader, on the other machine
    back = studies.import_study(store, studies.export_study(elsewhere, study_id))
    assert back == {"study_id": study_id, "created": False, "new_reads": 8, "already_there": 8}
    assert studies.import_study(store, studies.export_study(elsewhere, study_id))["new_reads"] == 0  # merged twice: counted once
    reads = store.reads(study_id)
    assert len(reads) == 16 and set(reads["reader"]) == {"Dr A", "Dr B"}


@pytest.mark.parametrize(("data", "message"), [(b"not json", "not a cxr-transfer reader study"),
                                               (json.dumps({"format": "x"}).encode(), "not a cxr-transfer reader study")])
def test_a_file_that_is_not_a_study_is_refused(tmp_path, data, message):
    with pytest.raises(CxrError, match=message):
        studies.import_study(Store(tmp_path), data)


def test_teaching_reads_are_stored_but_left_out_and_the_report_has_every_reader(study, capsys):
    from core.__main__ import main

    store, study_id = study
    read_all(store, study_id, "Dr A", "unaided")
    read_all(store, study_id, "Dr A", "aided")
    read_all(store, study_id, "Demo", "teaching")
    assert main(["reader-report", study_id, "--format", "json", "--runs-dir", str(store.runs_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["teaching_reads_excluded"] == 8
    assert [(r["reader"], r["session"], r["n_read"]) for r in report["readers"]] == [("Dr A", "unaided", 8), ("Dr A", "aided", 8)]
    assert report["readers"][0]["reader_metrics"]["sensitivity"] == 1.0  # read_all calls the truth
    assert report["aided_vs_unaided"][0]["n"] == 8 and report["study"]["n_images"] == 8
    cases = store.study_cases(study_id)
    model = report["readers"][0]["model_metrics"]
    from sklearn.metrics import roc_auc_score

    assert model["auc"] == pytest.approx(roc_auc_score(cases["truth"], cases["prob_positive"]))  # the model on the same images
    for fmt, marker in (("md", "| Dr A | unaided | 8 |"), ("html", "<table>")):
        assert main(["reader-report", study_id, "--format", fmt, "--runs-dir", str(store.runs_dir)]) == 0
        assert marker in capsys.readouterr().out


def test_the_pages_never_show_an_image_id_to_a_reader(study):
    """What the reading view shows comes from the study folder and opaque case ids only."""
    store, study_id = study
    state = studies.session_state(store, study_id, "Dr A", "unaided")
    gray, _ = studies.case_pictures(store, study_id, state["next"])
    assert gray.dtype == np.uint8
    with pytest.raises(CxrError, match="missing"):
        studies.case_pictures(store, study_id, "../runs.duckdb")


def test_the_run_report_counts_the_tags_and_summarises_its_reader_studies(finished, study, capsys):
    """JSON (`report --format json`) and HTML: tag counts, pooled reader figures, and CLAIM item 39 pointing at them."""
    from core.__main__ import main
    from core.results.checklist import claim_answers
    from core.results.export import run_report_html
    from core.results.report import table3

    store, study_id = study
    run_id = finished[1]
    save_tag(store, run_id, store.predictions(run_id)["image_id"][3], reviewer="Dr D", tag="support device")
    read_all(store, study_id, "Dr D", "unaided")
    assert main(["report", run_id, "--format", "json", "--runs-dir", str(store.runs_dir)]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["review_tags"] == tag_counts(store, run_id) and row["review_tags"]["support device"] >= 1
    mine = next(s for s in row["reader_studies"] if s["study_id"] == study_id)
    pooled = mine["pooled"][0]
    assert pooled["session"] == "unaided" and pooled["n_read"] == 8 and pooled["reader_metrics"]["sensitivity"] == 1.0
    html = run_report_html(store.runs_dir, run_id, gallery_size=0)
    assert "<h2 id='review'>Failure review and reader studies</h2>" in html and "support device" in html and "pilot" in html
    item = next(a for a in claim_answers(table3(store, [run_id])) if a.item == 39)
    assert item.status == "in this report" and item.section == "review"


def test_read_only_demo_mode_writes_no_tag_study_or_read(finished, study, monkeypatch):
    store, study_id = study
    run_id = finished[1]
    monkeypatch.setenv("CXR_DEMO_MODE", "1")
    image_id = store.predictions(run_id)["image_id"][0]
    with pytest.raises(CxrError, match="demo mode"):
        save_tag(store, run_id, image_id, reviewer="A", tag="other")
    with pytest.raises(CxrError, match="demo mode"):
        studies.create_study(store, run_id, n_images=4)
    with pytest.raises(CxrError, match="demo mode"):
        studies.record_read(store, study_id, reader="A", session="unaided", case_id="case-001", call=1, confidence=50, seconds=1)
    with pytest.raises(CxrError, match="demo mode"):
        studies.import_study(store, studies.export_study(store, study_id))


def test_the_runs_page_counts_the_tags_as_they_are_given(finished, monkeypatch):
    """Read afresh on each visit, not from the run's cached detail: a reviewer may be tagging in another tab."""
    from streamlit.testing.v1 import AppTest

    store, run_id, _ = finished
    monkeypatch.setenv("CXR_RUNS_DIR", str(store.runs_dir))
    at = AppTest.from_file("../pages/2_Runs.py", default_timeout=60)
    at.session_state["runs_run"] = run_id
    at.run()
    save_tag(store, run_id, store.predictions(run_id)["image_id"][7], reviewer="Dr E", tag="positioning or technique")
    at.run()
    assert not at.exception
    counts = next(df.value for df in at.dataframe if "positioning or technique" in df.value.columns)
    assert counts.iloc[0].to_dict() == tag_counts(store, run_id)


@pytest.mark.slow
def test_a_label_error_tagged_while_a_run_is_stopped_does_not_change_what_it_resumes_on(finished, monkeypatch):
    """Resume keeps the exclusions the run started with (same fingerprint); the new tag counts from the next run."""
    import core.training.engine as engine
    from core.training.engine import resume_cross_validation

    store, run_id, data = finished
    real = ctrl_c_at_fold(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(tiny_config(data, folds=2, max_iterations=1, gradcam=False, exclude_label_errors=True), store=store,
                             run_id="stopped")
    before = set(store.predictions("stopped")["image_id"])
    late = next(i for i in store.predictions(run_id)["image_id"] if i not in store.label_errors(str(data)))
    save_tag(store, run_id, late, reviewer="Dr F", tag="label error")
    monkeypatch.setattr(engine, "_train_pack", real)
    resume_cross_validation(store, "stopped")
    assert store.run("stopped")["status"] == "finished"
    done = set(store.predictions("stopped")["image_id"])
    assert before <= done and late in store.label_errors(str(data))
    assert late in done  # tagged after the start: still in this run, left out of the next one
