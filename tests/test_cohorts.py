"""Cohorts from public releases: MIMIC-CXR-JPG, CheXpert and NIH ChestX-ray14, read in their real layouts.

Every fixture is a tiny copy of a release's real layout with the exact real column names,
built in tmp_path: the point is that the selection rules (labeller agreement, uncertain
labels, views, splits, sampling) hold on the files a user actually downloads.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import CxrError
from core.__main__ import main
from core.data.cohorts import CohortError, CohortOptions, build_cohort, format_flow, write_cohort
from core.data.sources import build_manifest

from conftest import tiny_config

MIMIC_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
                "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
MIMIC_META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns", "StudyDate",
              "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
                    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                    "Pleural Other", "Fracture", "Support Devices"]
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
EFFUSION = {"Pleural Effusion": 1.0}
NORMAL = {"No Finding": 1.0}
SAME = object()  # negbio labels the study like chexpert


def _jpeg(size: int = 8, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


TINY_JPEG = _jpeg()


def _write_csv(path: Path, df: pd.DataFrame, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False)
    else:
        df.to_csv(path, index=False)


def _value(v) -> str:
    return "" if v is None else f"{float(v):.1f}"


# --- MIMIC-CXR-JPG 2.0.0 --------------------------------------------------------------------


@dataclass
class Study:
    """One MIMIC study: its images (dicom_id -> ViewPosition) and each labeller's non-blank labels."""

    subject: str
    study: str
    images: dict[str, str]
    chexpert: dict[str, float] | None
    negbio: object = SAME  # dict, SAME, or None (study missing from negbio)
    split: str = "train"


def write_mimic(root: Path, studies: list[Study], *, gz: bool = False, missing: tuple[str, ...] = (), image: bytes = TINY_JPEG) -> Path:
    """The release layout: four CSVs in ROOT and files/p10/p10000032/s50414267/<dicom_id>.jpg."""
    meta, split, labels = [], [], {"chexpert": [], "negbio": []}
    for st in studies:
        for dicom, view in st.images.items():
            meta.append([dicom, st.subject, st.study, "CHEST (PA AND LAT)", view, 3056, 2544, "21800506", "213014.531",
                         "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
            split.append([dicom, st.study, st.subject, st.split])
            if dicom not in missing:
                path = root / "files" / f"p{st.subject[:2]}" / f"p{st.subject}" / f"s{st.study}" / f"{dicom}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image)
        for lab, values in (("chexpert", st.chexpert), ("negbio", st.chexpert if st.negbio is SAME else st.negbio)):
            if values is not None:
                labels[lab].append([st.subject, st.study, *(_value(values.get(c)) for c in MIMIC_LABELS)])
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", pd.DataFrame(meta, columns=MIMIC_META), gz)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", pd.DataFrame(split, columns=["dicom_id", "study_id", "subject_id", "split"]), gz)
    for lab, rows in labels.items():
        _write_csv(root / f"mimic-cxr-2.0.0-{lab}.csv", pd.DataFrame(rows, columns=["subject_id", "study_id", *MIMIC_LABELS]), gz)
    return root


def _study(n: int, labels, *, views=("PA",), subject: str | None = None, **kw) -> Study:
    subject = subject or f"1{n:07d}"
    return Study(subject, f"5{n:07d}", {f"d{n:03d}{chr(97 + k)}": v for k, v in enumerate(views)}, labels, **kw)


def _mimic(tmp_path: Path, studies: list[Study], **options) -> tuple[pd.DataFrame, list]:
    root = write_mimic(tmp_path / "mimic", studies)
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=0, **options))
    return cohort.table, cohort.flow


def _labels(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["image_id"], table["label"]))


def _step(flow, name: str):
    return next(s for s in flow if s.name.startswith(name))


@pytest.mark.parametrize("gz", [False, True])
def test_mimic_keeps_only_studies_both_labellers_agree_on(tmp_path, gz):
    """The study's cohort: effusion vs normal where the CheXpert and NegBio labellers say the same; .csv.gz reads like .csv."""
    studies = [
        _study(1, EFFUSION),
        _study(2, NORMAL),
        _study(3, EFFUSION, negbio={"Pleural Effusion": 0.0}),  # negbio says no effusion: disagreement
        _study(4, EFFUSION, negbio=NORMAL),  # one says effusion, the other normal
        _study(5, EFFUSION, negbio=None),  # negbio never labelled it
        _study(6, {"Pleural Effusion": 1.0, "Cardiomegaly": 1.0}),  # other findings do not matter
    ]
    root = write_mimic(tmp_path / "mimic", studies, gz=gz)
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=0))
    assert _labels(cohort.table) == {"d001a": "Pleural Effusion", "d002a": "No Finding", "d006a": "Pleural Effusion"}
    assert _step(cohort.flow, "labelled by chexpert and negbio").n_removed == 1
    agree = _step(cohort.flow, "chexpert and negbio agree")
    assert agree.n_removed == 2 and agree.reason == "chexpert and negbio labellers disagree"


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("exclude", {"d003a": "Pleural Effusion", "d004a": "No Finding"}),
        ("positive", {"d001a": "Pleural Effusion", "d002a": "Pleural Effusion", "d003a": "Pleural Effusion", "d004a": "No Finding"}),
        ("negative", {"d002a": "No Finding", "d003a": "Pleural Effusion", "d004a": "No Finding"}),
    ],
)
def test_uncertain_labels_follow_the_chosen_policy(tmp_path, policy, expected):
    """-1 means 'may be present': dropped, or counted as present or absent, as the user says; the flow states which."""
    studies = [
        _study(1, {"Pleural Effusion": -1.0}),  # uncertain, nothing else: negative makes it neither class
        _study(2, {"Pleural Effusion": -1.0, "No Finding": 1.0}),  # uncertain but otherwise normal
        _study(3, EFFUSION),
        _study(4, NORMAL),
    ]
    table, flow = _mimic(tmp_path, studies, uncertain=policy)
    assert _labels(table) == expected
    step = _step(flow, "uncertain labels")
    if policy == "exclude":
        assert step.n_removed == 2 and "uncertain (-1)" in step.reason
    else:
        assert step.n_removed == 0 and step.note.startswith("2 images had an uncertain") and policy in step.name


def test_blank_labels_mean_not_mentioned(tmp_path):
    """Normal needs No Finding = 1 and the finding not positive; a blank finding is 'not mentioned', a blank No Finding is not normal."""
    studies = [
        _study(1, {"No Finding": 1.0}),  # finding blank: normal
        _study(2, {"No Finding": 1.0, "Pleural Effusion": 0.0}),  # explicitly negative: normal
        _study(3, {}),  # all blank: neither
        _study(4, {"Cardiomegaly": 1.0}),  # another finding, effusion blank: neither
        _study(5, {"Pleural Effusion": 0.0}),  # negative but No Finding blank: neither
        _study(6, EFFUSION),
    ]
    table, flow = _mimic(tmp_path, studies)
    assert _labels(table) == {"d001a": "No Finding", "d002a": "No Finding", "d006a": "Pleural Effusion"}
    step = _step(flow, "Pleural Effusion or No Finding")
    assert step.n_removed == 3 and step.reason == "neither a chosen finding nor normal"


def test_view_filter_defaults_to_frontal_and_is_configurable(tmp_path):
    studies = [_study(1, EFFUSION, views=("PA", "LATERAL")), _study(2, NORMAL, views=("AP", "LL")), _study(3, NORMAL, views=("",))]
    table, flow = _mimic(tmp_path / "a", studies)
    assert sorted(table["image_id"]) == ["d001a", "d002a"] and set(table["view"]) == {"PA", "AP"}
    assert _step(flow, "view: PA, AP").n_removed == 3
    table, _ = _mimic(tmp_path / "b", studies, views=())
    assert len(table) == 5
    table, _ = _mimic(tmp_path / "c", studies, views=("LATERAL", "LL"))
    assert sorted(table["image_id"]) == ["d001b", "d002b"]


def test_a_study_label_reaches_every_image_of_the_study(tmp_path):
    """Labels are per study, images per DICOM: both images of an effusion study are effusion; an excluded study takes its images along."""
    studies = [
        _study(1, EFFUSION, views=("PA", "AP")),
        _study(2, NORMAL, views=("PA", "PA")),
        _study(3, EFFUSION, views=("PA", "AP"), negbio=NORMAL),  # disagreement: both images leave
        _study(4, NORMAL, subject="10000001"),  # second study of patient 1
    ]
    table, flow = _mimic(tmp_path, studies)
    assert _labels(table) == {"d001a": "Pleural Effusion", "d001b": "Pleural Effusion", "d002a": "No Finding", "d002b": "No Finding",
                              "d004a": "No Finding"}
    assert table.set_index("image_id").loc["d001b", "study_id"] == "50000001"
    assert table.set_index("image_id").loc["d004a", "group"] == "10000001"  # subject_id is the group
    agree = _step(flow, "chexpert and negbio agree")
    assert (agree.n_removed, agree.n_studies, agree.n_patients) == (2, 3, 2)


def test_labels_join_on_subject_and_study(tmp_path):
    """A label row with the right study_id but another subject_id is not this study's label."""
    studies = [_study(1, EFFUSION), _study(2, NORMAL)]
    root = write_mimic(tmp_path / "mimic", studies)
    for lab in ("chexpert", "negbio"):
        df = pd.read_csv(root / f"mimic-cxr-2.0.0-{lab}.csv", dtype=str)
        df.loc[0, "subject_id"] = "19999999"
        df.to_csv(root / f"mimic-cxr-2.0.0-{lab}.csv", index=False)
    with pytest.raises(CohortError, match="'Pleural Effusion'"):  # the effusion study lost its label
        build_cohort("mimic", root, CohortOptions(n_per_class=0))


def _many(n_effusion: int, n_normal: int, *, images_per_patient: int = 1) -> list[Study]:
    studies = []
    for k in range(n_effusion + n_normal):
        subject = f"1{k // images_per_patient:07d}"
        studies.append(_study(k, EFFUSION if k < n_effusion else NORMAL, subject=subject))
    return studies


def test_sampling_is_seeded_and_balanced(tmp_path):
    root = write_mimic(tmp_path / "mimic", _many(30, 30))
    pick = {seed: build_cohort("mimic", root, CohortOptions(n_per_class=10, seed=seed)).table for seed in (0, 0, 1)}
    first = build_cohort("mimic", root, CohortOptions(n_per_class=10, seed=0)).table
    assert first["label"].value_counts().to_dict() == {"Pleural Effusion": 10, "No Finding": 10}
    assert first.equals(pick[0])  # same seed, same cohort, same order
    assert set(pick[1]["image_id"]) != set(first["image_id"])


def test_a_short_class_is_taken_whole_and_the_flow_says_so(tmp_path):
    root = write_mimic(tmp_path / "mimic", _many(4, 30))
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=10))
    assert cohort.table["label"].value_counts().to_dict() == {"No Finding": 10, "Pleural Effusion": 4}
    assert cohort.flow[-1].note == "only 4 'Pleural Effusion' images left, all taken"


def test_one_image_per_patient(tmp_path):
    root = write_mimic(tmp_path / "mimic", _many(12, 12, images_per_patient=3))
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=0, one_per_patient=True))
    assert cohort.table["group"].is_unique and len(cohort.table) == 8
    step = _step(cohort.flow, "one image per patient")
    assert (step.n_removed, step.n_patients) == (16, 8)
    again = build_cohort("mimic", root, CohortOptions(n_per_class=0, one_per_patient=True, seed=0)).table
    assert again.equals(cohort.table)


def test_official_split_filter(tmp_path):
    studies = [_study(1, EFFUSION, split="train"), _study(2, NORMAL, split="train"), _study(3, EFFUSION, split="test"),
               _study(4, NORMAL, split="test"), _study(5, NORMAL, split="validate")]
    table, flow = _mimic(tmp_path, studies, split="test")
    assert sorted(table["image_id"]) == ["d003a", "d004a"] and set(table["official_split"]) == {"test"}
    assert _step(flow, "official split: test").reason == "not in the test split"
    assert len(_mimic(tmp_path / "all", studies)[0]) == 5


def test_the_flow_counts_images_studies_and_patients_at_every_step(tmp_path):
    studies = [
        _study(1, EFFUSION, views=("PA", "LATERAL")),
        _study(2, NORMAL, views=("AP", "AP")),
        _study(3, {"Pleural Effusion": -1.0}),
        _study(4, {"Cardiomegaly": 1.0}, subject="10000001"),
        _study(5, EFFUSION, negbio=NORMAL),
        _study(6, NORMAL),
    ]
    root = write_mimic(tmp_path / "mimic", studies, missing=("d006a",))
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=0))
    rows = [(s.name, s.n_images, s.n_studies, s.n_patients, s.n_removed) for s in cohort.flow]
    assert rows == [
        ("images in mimic-cxr-2.0.0-metadata.csv", 8, 6, 5, 0),
        ("view: PA, AP", 7, 6, 5, 1),
        ("labelled by chexpert and negbio", 7, 6, 5, 0),
        ("uncertain labels: excluded", 6, 5, 4, 1),
        ("Pleural Effusion or No Finding", 5, 4, 4, 1),  # patient 10000001 keeps study 1
        ("chexpert and negbio agree", 4, 3, 3, 1),
        ("image file on disk", 3, 2, 2, 1),
    ]
    assert _step(cohort.flow, "image file on disk").reason == "file not found"
    assert cohort.flow[-1].classes == {"Pleural Effusion": 1, "No Finding": 2}
    manifest, flow_path = write_cohort(cohort, tmp_path / "out" / "effusion.csv")
    assert flow_path == tmp_path / "out" / "effusion.flow.json"
    flow = json.loads(flow_path.read_text())
    assert flow["source"] == "mimic" and flow["manifest"] == str(manifest) and flow["classes"] == {"Pleural Effusion": 1, "No Finding": 2}
    assert flow["options"]["findings"] == ["Pleural Effusion"] and flow["options"]["uncertain"] == "exclude"
    assert [s["n_images"] for s in flow["steps"]] == [8, 7, 7, 6, 5, 4, 3]
    table = format_flow(cohort.flow)
    assert "file not found" in table and "cohort: Pleural Effusion 1, No Finding 2" in table


def test_missing_images_are_counted_in_the_flow_and_left_out_before_sampling(tmp_path):
    """A partly downloaded release still gives n per class: files that are not on disk leave before the sample is drawn."""
    root = write_mimic(tmp_path / "mimic", _many(8, 8), missing=("d000a", "d001a", "d002a"))
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=5))
    assert cohort.table["label"].value_counts().to_dict() == {"Pleural Effusion": 5, "No Finding": 5}
    assert not {"d000a", "d001a", "d002a"} & set(cohort.table["image_id"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in cohort.table["path"])
    assert _step(cohort.flow, "image file on disk").n_removed == 3


def test_the_manifest_holds_no_identifier_beyond_the_release_ids(tmp_path):
    table, _ = _mimic(tmp_path, [_study(1, EFFUSION), _study(2, NORMAL)])
    assert list(table.columns) == ["image_id", "path", "label", "group", "view", "study_id", "official_split"]
    text = table.to_csv(index=False)
    assert "21800506" not in text and "213014" not in text  # StudyDate / StudyTime never read


def test_mimic_takes_sex_and_age_band_from_mimic_iv_patients_when_given(tmp_path):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, NORMAL)])
    patients = tmp_path / "patients.csv.gz"
    _write_csv(patients.with_suffix(""), pd.DataFrame({"subject_id": ["10000001", "10000002"], "gender": ["F", "M"],
                                                       "anchor_age": ["52", "91"], "anchor_year": ["2180", "2150"],
                                                       "anchor_year_group": ["2008 - 2010", "2011 - 2013"], "dod": ["", ""]}), True)
    table = build_cohort("mimic", root, CohortOptions(n_per_class=0, patients=str(patients))).table.set_index("group")
    assert table.loc["10000001", ["sex", "age_band"]].tolist() == ["female", "40-59"]
    assert table.loc["10000002", ["sex", "age_band"]].tolist() == ["male", "80+"]
    text = table.drop(columns=["path"]).to_csv()
    assert "2180" not in text and "91" not in text  # no shifted year, no exact age


def test_label_files_may_live_apart_from_the_images(tmp_path):
    """ROOT may be the release folder or its files/ folder; --labels-dir points at CSVs kept elsewhere."""
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, NORMAL)], gz=True)
    (tmp_path / "labels").mkdir()
    for csv_gz in root.glob("*.csv.gz"):
        csv_gz.rename(tmp_path / "labels" / csv_gz.name)
    for where in (root, root / "files"):
        table = build_cohort("mimic", where, CohortOptions(n_per_class=0), labels_dir=tmp_path / "labels").table
        assert len(table) == 2 and all(Path(p).is_file() for p in table["path"])
    with pytest.raises(CxrError, match="not found in .*mimic.*--labels-dir"):
        build_cohort("mimic", root)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "mimic-cxr-2.0.0-negbio.csv").unlink(), "negbio file mimic-cxr-2.0.0-negbio.csv.* not found.*--labels-dir"),
        (lambda root: pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv").drop(columns="ViewPosition")
         .to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False), "has no column 'ViewPosition'"),
    ],
)
def test_missing_files_and_columns_say_what_to_do(tmp_path, damage, message):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, NORMAL)])
    damage(root)
    with pytest.raises(CxrError, match=message):
        build_cohort("mimic", root)


def test_an_empty_cohort_names_the_step_that_emptied_it(tmp_path):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION, views=("LATERAL",)), _study(2, NORMAL, views=("LL",))])
    with pytest.raises(CohortError, match="no images left after step 'view: PA, AP'.*--views all") as err:
        build_cohort("mimic", root)
    assert [s.n_images for s in err.value.flow] == [2, 0]


def test_a_missing_class_is_refused(tmp_path):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, EFFUSION)])
    with pytest.raises(CohortError, match="no 'No Finding' images left"):
        build_cohort("mimic", root)


def test_unknown_finding_names_list_the_release_labels(tmp_path):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, NORMAL)])
    with pytest.raises(CxrError, match="'Efusion' is not a label of MIMIC-CXR; its labels: Atelectasis"):
        build_cohort("mimic", root, CohortOptions(findings=("Efusion",)))
    # case and spacing do not matter
    assert len(build_cohort("mimic", root, CohortOptions(findings=("pleural effusion",), n_per_class=0)).table) == 2


# --- several findings -----------------------------------------------------------------------


def test_several_findings_are_exclusive_classes_with_a_stated_policy(tmp_path):
    studies = [
        _study(1, {"Pleural Effusion": 1.0}),
        _study(2, {"Edema": 1.0}),
        _study(3, {"Pleural Effusion": 1.0, "Edema": 1.0}),  # both chosen findings
        _study(4, NORMAL),
    ]
    table, flow = _mimic(tmp_path / "x", studies, findings=("Edema", "Pleural Effusion"))
    assert _labels(table) == {"d001a": "Pleural Effusion", "d002a": "Edema", "d004a": "No Finding"}
    step = _step(flow, "one chosen finding per image")
    assert step.n_removed == 1 and step.reason == "more than one chosen finding"
    assert flow[-1].classes == {"Edema": 1, "Pleural Effusion": 1, "No Finding": 1}

    table, flow = _mimic(tmp_path / "f", studies, findings=("Edema", "Pleural Effusion"), multi_finding="first")
    assert _labels(table)["d003a"] == "Edema"  # priority in the order given
    step = _step(flow, "more than one chosen finding: the first listed")
    assert step.n_removed == 0 and step.note.startswith("1 images with more than one chosen finding took the first")


# --- CheXpert -------------------------------------------------------------------------------


def write_chexpert(parent: Path, rows: dict[str, list[tuple]], *, folder: str = "CheXpert-v1.0-small") -> Path:
    """rows: csv stem -> (relative path after the split folder, Frontal/Lateral, AP/PA, {label: value})."""
    for stem, items in rows.items():
        records = []
        for rel, fl, appa, labels in items:
            path = f"{folder}/{stem}/{rel}"
            (parent / path).parent.mkdir(parents=True, exist_ok=True)
            (parent / path).write_bytes(TINY_JPEG)
            records.append([path, "Female", 68, fl, appa, *(_value(labels.get(c)) for c in CHEXPERT_COLUMNS[5:])])
        _write_csv(parent / folder / f"{stem}.csv", pd.DataFrame(records, columns=CHEXPERT_COLUMNS), gz=False)
    return parent


def test_chexpert_patients_and_views_come_from_the_path_and_view_columns(tmp_path):
    parent = write_chexpert(tmp_path, {
        "train": [
            ("patient00001/study1/view1_frontal.jpg", "Frontal", "AP", EFFUSION),
            ("patient00001/study1/view2_lateral.jpg", "Lateral", "", EFFUSION),
            ("patient00001/study2/view1_frontal.jpg", "Frontal", "PA", {"Pleural Effusion": -1.0}),
            ("patient00002/study1/view1_frontal.jpg", "Frontal", "PA", NORMAL),
        ],
        "valid": [("patient64541/study1/view1_frontal.jpg", "Frontal", "AP", NORMAL)],
    })
    for root in (parent, parent / "CheXpert-v1.0-small"):  # the dataset folder or its parent
        cohort = build_cohort("chexpert", root, CohortOptions(n_per_class=0))
        t = cohort.table.set_index("image_id")
        assert list(t.index) == ["train/patient00002/study1/view1_frontal.jpg", "valid/patient64541/study1/view1_frontal.jpg",
                                 "train/patient00001/study1/view1_frontal.jpg"]
        assert t["group"].tolist() == ["patient00002", "patient64541", "patient00001"]
        assert t["study_id"].tolist() == ["patient00002/study1", "patient64541/study1", "patient00001/study1"]
        assert t["view"].tolist() == ["PA", "AP", "AP"] and t["official_split"].tolist() == ["train", "validate", "train"]
        assert all(Path(p).is_file() for p in t["path"])
        # sex and age only as subgroup categories: the band, never the age (68 here)
        assert set(t["sex"]) == {"female"} and set(t["age_band"]) == {"60-79"}
        assert "Female" not in cohort.table.to_csv() and "Sex" not in cohort.table.columns and "68" not in cohort.table.drop(columns=["path"]).to_csv()
    assert [s.n_removed for s in cohort.flow[1:3]] == [1, 1]  # the lateral view, then the uncertain study
    with pytest.raises(CohortError, match="no 'Pleural Effusion' images left") as err:  # valid.csv here holds one normal image
        build_cohort("chexpert", parent, CohortOptions(n_per_class=0, split="validate"))
    assert (err.value.flow[0].name, err.value.flow[0].n_images) == ("images in valid.csv", 1)
    with pytest.raises(CxrError, match="no test split"):
        build_cohort("chexpert", parent, CohortOptions(split="test"))


def test_chexpert_lateral_views_can_be_kept(tmp_path):
    parent = write_chexpert(tmp_path, {"train": [
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "AP", EFFUSION),
        ("patient00001/study1/view2_lateral.jpg", "Lateral", "", EFFUSION),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "PA", NORMAL),
    ]})
    table = build_cohort("chexpert", parent, CohortOptions(n_per_class=0, views=())).table
    assert sorted(table["view"]) == ["AP", "LATERAL", "PA"]


# --- NIH ChestX-ray14 -----------------------------------------------------------------------


def write_nih(root: Path, rows: list[tuple[str, str, str, str]], *, folders: tuple[str, ...] = ("images_001/images", "images_002/images"),
              entry: str = "Data_Entry_2017.csv") -> Path:
    """rows: (Image Index, Finding Labels, Patient ID, View Position); images spread over the split download's folders."""
    lines = [NIH_HEADER]
    for k, (name, labels, patient, view) in enumerate(rows):
        lines.append(f"{name},{labels},{k},{patient},058Y,M,{view},2682,2749,0.143,0.143,")
        folder = root / folders[k % len(folders)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(TINY_JPEG)
    (root / entry).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_nih_labels_split_on_pipes_and_images_are_found_by_name(tmp_path):
    root = write_nih(tmp_path / "nih", [
        ("00000001_000.png", "Effusion|Infiltration", "1", "PA"),
        ("00000001_001.png", "No Finding", "1", "AP"),
        ("00000002_000.png", "Infiltration", "2", "PA"),
        ("00000003_000.png", "No Finding", "3", "PA"),
        ("00000004_000.png", "Effusion", "4", "PA"),
    ])
    cohort = build_cohort("nih", root, CohortOptions(n_per_class=0))  # the default 'Pleural Effusion' is 'Effusion' here
    t = cohort.table.set_index("image_id")
    assert t["label"].to_dict() == {"00000001_000.png": "Effusion", "00000004_000.png": "Effusion",
                                    "00000001_001.png": "No Finding", "00000003_000.png": "No Finding"}
    assert t.loc["00000001_000.png", "path"].endswith("images_001/images/00000001_000.png")
    assert t.loc["00000001_001.png", "path"].endswith("images_002/images/00000001_001.png")
    assert t.loc["00000001_001.png", "group"] == "1" and t.loc["00000001_001.png", "follow_up"] == "1"
    assert "'Pleural Effusion' is 'Effusion'" in cohort.flow[0].note
    assert "058Y" not in cohort.table.to_csv()
    assert set(t["sex"]) == {"male"} and set(t["age_band"]) == {"40-59"}  # 058Y, as a band


def test_nih_header_without_the_trailing_column_and_official_lists(tmp_path):
    root = write_nih(tmp_path / "nih", [
        ("00000001_000.png", "Effusion", "1", "PA"), ("00000002_000.png", "No Finding", "2", "PA"),
        ("00000003_000.png", "Effusion", "3", "PA"), ("00000004_000.png", "No Finding", "4", "PA"),
    ], folders=("images",), entry="Data_Entry_2017_v2020.csv")
    path = root / "Data_Entry_2017_v2020.csv"
    path.write_text("\n".join(line.rstrip(",") for line in path.read_text().splitlines()) + "\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n")
    cohort = build_cohort("nih", root, CohortOptions(n_per_class=0, split="test"))
    assert sorted(cohort.table["image_id"]) == ["00000003_000.png", "00000004_000.png"]
    assert cohort.flow[0].name == "images in Data_Entry_2017_v2020.csv"


# --- the command line and the run it feeds ---------------------------------------------------


def test_sources_use_a_group_column_when_no_other_is_chosen(tmp_path):
    """So a cohort manifest is split by patient with no --set group_column."""
    pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "y"], "group": ["p1", "p2"]}).to_csv(tmp_path / "m.csv", index=False)
    assert build_manifest(str(tmp_path / "m.csv")).table["group"].tolist() == ["p1", "p2"]
    pd.DataFrame({"path": ["a.png"], "label": ["x"], "group": ["p1"], "subject": ["s9"]}).to_csv(tmp_path / "n.csv", index=False)
    assert build_manifest(str(tmp_path / "n.csv"), group_column="subject").table["group"].tolist() == ["s9"]


def test_cli_writes_a_manifest_that_run_reads_with_patient_groups(tmp_path, capsys):
    root = write_mimic(tmp_path / "mimic", _many(6, 6, images_per_patient=2) + [_study(99, NORMAL, views=("LATERAL",))])
    out = tmp_path / "cohorts" / "effusion.csv"
    code = main(["cohort", "mimic", str(root), "--out", str(out), "--n-per-class", "4", "--seed", "3", "--views", "pa,ap"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() == str(out)  # stdout: only the result
    assert "view: PA, AP" in captured.err and "cohort: Pleural Effusion 4, No Finding 4" in captured.err
    assert (tmp_path / "cohorts" / "effusion.flow.json").is_file()
    manifest = build_manifest(str(out))
    assert manifest.source == "csv" and len(manifest.included) == 8
    assert (manifest.table["group"] != "").all() and manifest.table["group"].nunique() < 8  # 2 images per patient
    assert set(manifest.table["label"]) == {"Pleural Effusion", "No Finding"}


def test_cli_failures_are_one_line_with_the_flow_before_it(tmp_path, capsys):
    root = write_mimic(tmp_path / "mimic", [_study(1, EFFUSION), _study(2, NORMAL)])
    code = main(["cohort", "mimic", str(root), "--out", str(tmp_path / "m.csv"), "--views", "LL"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: no images left after step 'view: LL'")
    assert any(line.startswith("view: LL") for line in err)
    code = main(["cohort", "nih", str(tmp_path), "--out", str(tmp_path / "m.csv")])
    assert code == 2 and "Data_Entry_2017" in capsys.readouterr().err


@pytest.mark.slow
def test_a_mimic_cohort_trains_end_to_end(tmp_path):
    """The manifest goes straight into cross-validation, grouped by subject_id."""
    from core.training.engine import run_cross_validation
    from core.results.store import Store

    studies = _many(8, 8)
    root = write_mimic(tmp_path / "mimic", studies)
    for k, path in enumerate(sorted((root / "files").rglob("*.jpg"))):  # 40 px, every image distinct
        path.write_bytes(_jpeg(40, 40 + 10 * k))
    cohort = build_cohort("mimic", root, CohortOptions(n_per_class=8))
    manifest, _ = write_cohort(cohort, tmp_path / "cohort.csv")
    store = Store(tmp_path / "runs")
    result = run_cross_validation(tiny_config(data=manifest, max_iterations=1, eval_every=1, gradcam=False), store=store, preset="quick")
    run = store.run(result.run_id)
    assert run["status"] == "finished" and run["n_images"] == 16 and bool(run["grouped"])
