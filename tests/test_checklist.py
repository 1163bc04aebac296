"""The reporting checklist: every CLAIM 2024 item once, answered from what the runs hold, never claimed when not known."""

from __future__ import annotations

import html
import re

import pytest

from core.results.checklist import AUTHORS, IN_REPORT, NOT_DONE, PARTLY, SECTIONS, claim_answers

from conftest import blob_dataset, tiny_config

BARE = {"config": {"gradcam": False}, "subgroups": [], "external": [], "leak_status": "clean", "pointing_game": None}


def by_item(rows, guideline="CLAIM 2024"):
    return {a.item: a for a in claim_answers(rows) if a.guideline == guideline}


def test_every_claim_2024_item_appears_once_with_a_known_status_and_section():
    answers = claim_answers([BARE])
    claim = [a.item for a in answers if a.guideline == "CLAIM 2024"]
    assert claim == list(range(1, 45))
    assert {a.status for a in answers} <= {IN_REPORT, PARTLY, AUTHORS, NOT_DONE}
    assert all(a.section in SECTIONS for a in answers if a.section)
    assert all(a.section for a in answers if a.status in (IN_REPORT, PARTLY))  # an answer in the report says where


def test_what_only_the_authors_can_know_is_never_marked_as_answered():
    everything = {**BARE, "config": {"gradcam": True}, "pointing_game": 0.9, "subgroups": [{"variable": "sex"}],
                  "external": [{"name": "b"}], "repeats_summary": {}, "corrected_p_vs_first": 0.2, "has_cohort_flow": True}
    answers = by_item([everything])
    for item in (1, 2, 3, 4, 5, 6, 11, 13, 15, 16, 17, 18, 21, 34, 40, 41, 44):  # aims, labels, ethics, design, funding
        assert answers[item].status == AUTHORS, item


def test_answers_follow_what_was_run():
    bare = by_item([BARE])
    assert bare[33].status == NOT_DONE and "core validate" in bare[33].note  # no external validation
    assert bare[30].status == NOT_DONE and "repeats" in bare[30].note  # no robustness analysis
    assert bare[31].status == NOT_DONE  # gradcam=false
    assert bare[27].status == AUTHORS  # out-of-fold results use no ensemble
    full = by_item([{**BARE, "config": {"gradcam": True}, "pointing_game": 0.9, "external": [{"name": "b"}], "repeats_summary": {}}])
    assert full[33].status == IN_REPORT and full[33].section == "external"
    assert full[30].status == IN_REPORT and full[30].section == "repeats"
    assert full[31].status == IN_REPORT  # heat maps validated against masks (pointing game)
    assert by_item([{**BARE, "config": {"gradcam": True}}])[31].status == PARTLY  # heat maps without masks: not validated
    assert by_item([{**BARE, "leak_status": "unchecked"}])[20].note.startswith("The leakage audit")


@pytest.mark.slow
def test_the_html_report_ends_with_the_checklist_and_every_link_reaches_its_section(tmp_path):
    from core.results.export import run_report_html
    from core.results.store import Store
    from core.training.engine import run_cross_validation

    data = blob_dataset(tmp_path / "data", n_per_class=6, size=32)
    store = Store(tmp_path / "runs")
    run = run_cross_validation(tiny_config(data, folds=2, max_iterations=2), store=store)
    page = run_report_html(tmp_path / "runs", run.run_id)
    assert "Reporting checklist (CLAIM 2024" in page and page.rindex("id='checklist'") > page.rindex("id='runs'")
    anchors = set(re.findall(r"id='([\w-]+)'", page))
    for target in re.findall(r"href='#([\w-]+)'", page):
        assert target in anchors, target
    rows = re.findall(r"<tr><td>CLAIM 2024</td><td>(\d+)</td><td>(.*?)</td><td>(.*?)</td>", page)
    assert [int(n) for n, _, _ in rows] == list(range(1, 45))
    status = {int(n): html.unescape(s) for n, _, s in rows}
    assert status[33] == NOT_DONE and status[1] == AUTHORS and status[28] == IN_REPORT
