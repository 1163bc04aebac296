"""Cohorts from public chest-radiograph releases: MIMIC-CXR-JPG 2.0.0, CheXpert and NIH ChestX-ray14.

`build_cohort` reads a release's own label files, selects images of one or more findings
against normal, and returns a manifest table that `python -m core run --data manifest.csv`
takes directly, together with a *cohort flow*: every selection step with the images, studies
and patients left after it and the reason the others left (a CONSORT-style diagram as data).

Selection, in this order (the flow records each step that applies):

1. the official split (`split`: all, train, validate or test);
2. the view (`views`, default frontal PA and AP);
3. (MIMIC) the study is labelled by both the CheXpert and the NegBio labeller;
4. uncertain (-1) labels of a chosen finding: `exclude` the image (default; in MIMIC when
   either labeller is uncertain), or count them as `positive` or `negative`;
5. (several findings) images with more than one chosen finding: `exclude` (default) or the
   `first` in the order given;
6. the image shows a chosen finding, or is normal: the normal column (`No Finding`) is 1 and
   no chosen finding is positive; a blank label means "not mentioned", i.e. not positive;
7. (MIMIC) both labellers give the study the same class;
8. the image file exists under the release root: listed images that are missing on disk are
   *left out and counted in the flow* (reason "file not found") before sampling, so that a
   partly downloaded release still yields `n_per_class` images per class;
9. optionally one image per patient (chosen at random with `seed`);
10. `n_per_class` images per class sampled with `seed` (all of them when fewer are left;
    the flow says so).

Labels are per study in MIMIC and per image elsewhere; a MIMIC image takes the label of its
study (joined on subject_id and study_id). Only the identifiers the releases use to name
files are read (MIMIC subject/study/DICOM ids, CheXpert patient/study folders, NIH image
name and patient id); dates, ages and sexes are never read, so they cannot reach a manifest.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import CxrError

SOURCES = ("mimic", "chexpert", "nih")
UNCERTAIN_POLICIES = ("exclude", "positive", "negative")
MULTI_POLICIES = ("exclude", "first")
SPLITS = ("all", "train", "validate", "test")
MANIFEST_COLUMNS = ["image_id", "path", "label", "group", "view"]

MIMIC_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
                  "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
MIMIC_TABLES = {
    "chexpert": "mimic-cxr-2.0.0-chexpert",
    "negbio": "mimic-cxr-2.0.0-negbio",
    "metadata": "mimic-cxr-2.0.0-metadata",
    "split": "mimic-cxr-2.0.0-split",
}
NIH_LABELS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass",
              "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]
NIH_ENTRIES = ("Data_Entry_2017_v2020", "Data_Entry_2017")  # the 2020 revision first when both are present
NIH_SPLIT_LISTS = {"train": "train_val_list.txt", "test": "test_list.txt"}
# Names that differ between releases: what a user may type -> what NIH calls it.
NIH_ALIASES = {"pleural effusion": "Effusion", "pleural thickening": "Pleural_Thickening"}

R_SPLIT = "not in the {split} split"
R_VIEW = "view not {views}"
R_UNLABELLED = "study missing from the chexpert or negbio labels"
R_UNCERTAIN = "uncertain (-1) label of a chosen finding (policy: exclude)"
R_MULTI = "more than one chosen finding"
R_NEITHER = "neither a chosen finding nor normal"
R_DISAGREE = "chexpert and negbio labellers disagree"
R_MISSING = "file not found"
R_PATIENT = "another image of the same patient was kept"
R_SAMPLE = "not drawn in the sample"


@dataclass(frozen=True)
class CohortOptions:
    """What to select; the defaults reproduce the study's cohort (pleural effusion vs normal, 500 + 500 frontal images)."""

    findings: tuple[str, ...] = ("Pleural Effusion",)  # one class each, in priority order
    normal: str = "No Finding"  # the normal class's column; '' = no normal class (then two or more findings)
    uncertain: str = "exclude"  # exclude | positive | negative
    views: tuple[str, ...] = ("PA", "AP")  # () = every view
    n_per_class: int = 500  # 0 = every image left
    seed: int = 0
    one_per_patient: bool = False
    split: str = "all"  # all | train | validate | test (the release's official split)
    multi_finding: str = "exclude"  # exclude | first
    patients: str = ""  # MIMIC-CXR: MIMIC-IV's patients.csv[.gz], for sex and age band (subgroups); '' = none

    def validate(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise CxrError(f"uncertain policy {self.uncertain!r} is unknown; choose {', '.join(UNCERTAIN_POLICIES)}")
        if self.multi_finding not in MULTI_POLICIES:
            raise CxrError(f"multi-finding policy {self.multi_finding!r} is unknown; choose {', '.join(MULTI_POLICIES)}")
        if self.split not in SPLITS:
            raise CxrError(f"split {self.split!r} is unknown; choose {', '.join(SPLITS)}")
        if self.n_per_class < 0:
            raise CxrError("n_per_class must be 0 (every image) or more")
        if not self.findings:
            raise CxrError("no finding chosen; pass --finding NAME (e.g. --finding 'Pleural Effusion')")
        classes = [*self.findings, *([self.normal] if self.normal else [])]
        if len(classes) < 2:
            raise CxrError("a cohort needs two classes: a finding and --normal, or two or more findings")
        if len({c.lower() for c in classes}) < len(classes):
            raise CxrError(f"the classes {', '.join(classes)} repeat a name; each finding and the normal class must differ")


@dataclass
class FlowStep:
    """One selection step: what is left after it, and why the others left."""

    name: str
    n_images: int
    n_studies: int
    n_patients: int
    n_removed: int = 0  # images removed by this step
    reason: str = ""  # why they were removed
    note: str = ""  # anything else worth knowing (policy effects, short classes)
    classes: dict[str, int] = field(default_factory=dict)  # images per class, once classes are known


@dataclass
class Cohort:
    """A selected cohort: the manifest table (one row per image) and its flow."""

    table: pd.DataFrame  # MANIFEST_COLUMNS + source-specific id columns; paths absolute
    flow: list[FlowStep]
    source: str
    root: str
    options: CohortOptions
    classes: list[str]  # the class names, as the release spells them

    def flow_json(self, manifest: str = "") -> dict:
        return {
            "source": self.source,
            "root": self.root,
            "manifest": manifest,
            "options": {**asdict(self.options), "findings": list(self.options.findings), "views": list(self.options.views)},
            "classes": {c: int((self.table["label"] == c).sum()) for c in self.classes},
            "steps": [asdict(s) for s in self.flow],
        }


class CohortError(CxrError):
    """No usable cohort; carries the flow up to the step that emptied it, so the CLI can show where."""

    def __init__(self, message: str, flow: list[FlowStep]) -> None:
        super().__init__(message)
        self.flow = flow


def parse_list(text: str) -> tuple[str, ...]:
    """'Pleural Effusion, Edema' -> ('Pleural Effusion', 'Edema')."""
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


def parse_views(text: str) -> tuple[str, ...]:
    """'PA,AP' -> ('PA', 'AP'); 'all' or '' -> () (every view)."""
    views = tuple(v.upper() for v in parse_list(text))
    return () if views in ((), ("ALL",)) else views


def build_cohort(source: str, root: str | Path, options: CohortOptions | None = None, *, labels_dir: str | Path | None = None) -> Cohort:
    """Select a cohort from a release on disk.

    Args:
        source: mimic, chexpert or nih.
        root: the release's folder (MIMIC: holding `files/`; CheXpert: the dataset folder or its
            parent; NIH: holding `Data_Entry_2017*.csv` and `images*/`).
        options: the selection; defaults to the study's.
        labels_dir: where the label/metadata CSVs are, when not in `root`.

    Raises:
        CxrError: unknown source or options, missing label files or columns, unknown finding names.
        CohortError: no image (or no image of some class) left; carries the flow so far.
    """
    options = options or CohortOptions()
    options.validate()
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CxrError(f"release folder {root} does not exist or is not a folder; pass the folder you downloaded the {source} release to")
    dirs = [Path(labels_dir).expanduser().resolve()] if labels_dir else []
    dirs += [root] + ([root.parent] if root.name == "files" else [])
    if source == "mimic":
        listing = _list_mimic(root, dirs, options)
    elif source == "chexpert":
        listing = _list_chexpert(root, dirs, options)
    elif source == "nih":
        listing = _list_nih(root, dirs, options)
    else:
        raise CxrError(f"unknown cohort source {source!r}; choose {', '.join(SOURCES)}")
    table, flow = _select(listing, options)
    return Cohort(table, flow, source, str(root), options, listing.classes)


def write_cohort(cohort: Cohort, out: str | Path) -> tuple[Path, Path]:
    """Write the manifest CSV and `<stem>.flow.json` next to it; returns both paths."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cohort.table.to_csv(out, index=False)
    flow_path = out.with_name(out.stem + ".flow.json")
    flow_path.write_text(json.dumps(cohort.flow_json(str(out)), indent=2) + "\n", encoding="utf-8")
    return out, flow_path


def check_out(out: str | Path) -> Path:
    """The manifest path, absolute; refused unless it is a .csv file name (what `run --data` reads as a manifest)."""
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise CxrError(f"--out {out} is a folder; give a file name such as {out / 'manifest.csv'}")
    if out.suffix.lower() != ".csv":
        raise CxrError(f"--out {out.name} must end in .csv, so that `python -m core run --data {out.name}` reads it as a manifest")
    return out


def format_flow(flow: list[FlowStep]) -> str:
    """The flow as a plain-text table (the CLI prints it on stderr)."""
    rows = [("step", "images", "studies", "patients", "removed", "reason")]
    for s in flow:
        rows.append((s.name, str(s.n_images), str(s.n_studies), str(s.n_patients), str(s.n_removed) if s.n_removed else "", s.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)] + [r[5]]
        lines.append("  ".join(cells).rstrip())
        if k and (note := flow[k - 1].note):
            lines.append(f"    note: {note}")
    if flow and flow[-1].classes:
        lines.append("cohort: " + ", ".join(f"{c} {n}" for c, n in flow[-1].classes.items()))
    return "\n".join(lines)


# --- the selection, common to every source ---------------------------------------------------


@dataclass
class _Listing:
    """What a source reader hands to the selection: every listed image with its labels."""

    images: pd.DataFrame  # image_id, path, group, study, view, split, + `extra` columns
    labels: dict[str, pd.DataFrame]  # labeller -> numeric columns (chosen findings, normal) aligned with images; NaN = blank
    labelled: dict[str, pd.Series]  # labeller -> bool: the image's study has a row in its label file
    findings: list[str]  # chosen findings as the release spells them
    normal: str  # '' = no normal class
    extra: list[str]  # source-specific id columns written to the manifest
    start: str  # name of the first flow step
    note: str = ""
    has_uncertain: bool = True

    @property
    def classes(self) -> list[str]:
        return [*self.findings, *([self.normal] if self.normal else [])]


class _Flow:
    def __init__(self) -> None:
        self.steps: list[FlowStep] = []

    def add(self, name: str, df: pd.DataFrame, *, removed: int = 0, reason: str = "", note: str = "", classes: list[str] | None = None) -> None:
        counts = {c: int((df["label"] == c).sum()) for c in classes} if classes else {}
        self.steps.append(FlowStep(name, len(df), int(df["study"].nunique()), int(df["group"].nunique()), removed, reason, note, counts))

    def keep(self, name: str, df: pd.DataFrame, mask: pd.Series, reason: str, hint: str, *, note: str = "",
             classes: list[str] | None = None) -> pd.DataFrame:
        kept = df[mask.to_numpy(bool)]
        self.add(name, kept, removed=len(df) - len(kept), reason=reason if len(kept) < len(df) else "", note=note, classes=classes)
        if kept.empty:
            raise CohortError(f"no images left after step '{name}' ({len(df)} removed: {reason}); {hint}", self.steps)
        return kept


def _classify(values: pd.DataFrame, findings: list[str], normal: str, options: CohortOptions) -> tuple[pd.Series, pd.Series]:
    """Each image's class under the options, or why it has none ('uncertain', 'multi', 'neither')."""
    f = values[findings]
    uncertain = (f == -1).to_numpy()
    positive = (f == 1).to_numpy() | (uncertain if options.uncertain == "positive" else False)
    n_pos = positive.sum(axis=1)
    first = np.array(findings, dtype=object)[positive.argmax(axis=1)]
    is_normal = (values[normal] == 1).to_numpy() & (n_pos == 0) if normal else np.zeros(len(values), bool)
    cls = np.where(n_pos >= 1, first, np.where(is_normal, normal, ""))
    why = np.where(cls == "", "neither", "")
    if options.multi_finding == "exclude":
        why = np.where(n_pos > 1, "multi", why)
        cls = np.where(n_pos > 1, "", cls)
    if options.uncertain == "exclude":
        why = np.where(uncertain.any(axis=1), "uncertain", why)
        cls = np.where(uncertain.any(axis=1), "", cls)
    index = values.index
    return pd.Series(cls, index=index, dtype=object), pd.Series(why, index=index, dtype=object)


def _select(listing: _Listing, options: CohortOptions) -> tuple[pd.DataFrame, list[FlowStep]]:
    df = listing.images.copy()
    df["label"] = ""
    names = list(listing.labels)
    for lab in names:
        cls, why = _classify(listing.labels[lab], listing.findings, listing.normal, options)
        df[f"_cls_{lab}"] = cls.where(listing.labelled[lab], "")
        df[f"_why_{lab}"] = why.where(listing.labelled[lab], "unlabelled")
        values = listing.labels[lab][listing.findings]
        df[f"_unc_{lab}"] = (values == -1).any(axis=1) & listing.labelled[lab]
        df[f"_multi_{lab}"] = ((values == 1) | ((values == -1) & (options.uncertain == "positive"))).sum(axis=1) > 1
    why = df[[f"_why_{lab}" for lab in names]]
    flow = _Flow()
    flow.add(listing.start, df, note=listing.note)

    if options.split != "all":
        df = flow.keep(f"official split: {options.split}", df, df["split"] == options.split, R_SPLIT.format(split=options.split),
                       "choose another --split, or --split all")
    if options.views:
        views = "/".join(options.views)
        found = ", ".join(f"{v or 'blank'} {n}" for v, n in df["view"].value_counts().head(6).items())
        df = flow.keep(f"view: {', '.join(options.views)}", df, df["view"].str.upper().isin(options.views), R_VIEW.format(views=views),
                       f"views in the data: {found}; choose some with --views, or --views all")
    why = why.loc[df.index]
    if len(names) > 1:
        df = flow.keep("labelled by chexpert and negbio", df, ~(why == "unlabelled").any(axis=1), R_UNLABELLED,
                       "check that the chexpert and negbio label files belong to this release")
        why = why.loc[df.index]
    if listing.has_uncertain:
        uncertain = df[[f"_unc_{lab}" for lab in names]].any(axis=1)
        if options.uncertain == "exclude":
            df = flow.keep("uncertain labels: excluded", df, ~(why == "uncertain").any(axis=1), R_UNCERTAIN,
                           "count uncertain labels with --uncertain positive or --uncertain negative")
        else:
            flow.add(f"uncertain labels: counted as {options.uncertain}", df,
                     note=f"{int(uncertain.sum())} images had an uncertain (-1) chosen finding, counted as {options.uncertain}")
        why = why.loc[df.index]
    if len(listing.findings) > 1:
        multi = df[[f"_multi_{lab}" for lab in names]].any(axis=1)
        if options.multi_finding == "exclude":
            df = flow.keep("one chosen finding per image", df, ~(why == "multi").any(axis=1), R_MULTI,
                           "keep such images with --multi-finding first (priority in the order of --finding)")
        else:
            flow.add("more than one chosen finding: the first listed", df,
                     note=f"{int(multi.sum())} images with more than one chosen finding took the first in the order "
                          f"{', '.join(listing.findings)}")
        why = why.loc[df.index]
    classes = listing.classes
    df = flow.keep(" or ".join(classes), df, (why != "neither").any(axis=1), R_NEITHER,
                   f"check the names given to --finding and --normal (chosen: {', '.join(classes)})", classes=None if len(names) > 1 else classes)
    cls = df[[f"_cls_{lab}" for lab in names]]
    df = df.assign(label=cls.iloc[:, 0])
    if len(names) > 1:
        agree = cls.eq(cls.iloc[:, 0], axis=0).all(axis=1) & (cls.iloc[:, 0] != "")
        df = flow.keep("chexpert and negbio agree", df, agree, R_DISAGREE, "no study was labelled alike by both labellers", classes=classes)
    else:
        flow.steps[-1].classes = {c: int((df["label"] == c).sum()) for c in classes}

    on_disk = df["path"].map(os.path.isfile)
    example = df["path"].iloc[0]
    df = flow.keep("image file on disk", df, on_disk, R_MISSING,
                   f"no listed image was found (e.g. {example}); pass the release folder that holds the images as ROOT",
                   classes=classes)

    rng = np.random.default_rng(options.seed)
    df = df.sort_values("image_id", kind="stable")
    if options.one_per_patient:
        shuffled = df.iloc[rng.permutation(len(df))]
        keep = df.index.isin(shuffled.drop_duplicates("group").index)
        df = flow.keep("one image per patient", df, pd.Series(keep, index=df.index), R_PATIENT, "", classes=classes)

    if options.n_per_class:
        picked, short = [], []
        for c in classes:
            idx = df.index[df["label"] == c]
            if len(idx) > options.n_per_class:
                idx = idx[np.sort(rng.choice(len(idx), options.n_per_class, replace=False))]
            elif len(idx) < options.n_per_class:
                short.append(f"only {len(idx)} {c!r} images left, all taken")
            picked.extend(idx)
        note = "; ".join(short)
        df = flow.keep(f"sample {options.n_per_class} per class (seed {options.seed})", df, pd.Series(df.index.isin(picked), index=df.index),
                       R_SAMPLE, "", note=note, classes=classes)
    empty = [c for c in classes if not (df["label"] == c).any()]
    if empty:
        raise CohortError(
            f"no {', '.join(map(repr, empty))} images left (see the cohort flow); a classifier needs every class: "
            "loosen --views, --split or --uncertain, or choose other --finding/--normal names",
            flow.steps,
        )
    df = df.sort_values(["label", "image_id"], kind="stable")
    out = df[["image_id", "path", "label", "group", "view", *listing.extra]].reset_index(drop=True)
    return out, flow.steps


# --- reading the releases ------------------------------------------------------------------


def _find(dirs: list[Path], stems: tuple[str, ...], what: str, hint: str) -> Path:
    for stem in stems:
        for d in dirs:
            for suffix in (".csv", ".csv.gz"):
                if (d / f"{stem}{suffix}").is_file():
                    return d / f"{stem}{suffix}"
    where = " or ".join(str(d) for d in dict.fromkeys(dirs))
    raise CxrError(f"{what} {' / '.join(s + '.csv[.gz]' for s in stems)} not found in {where}; {hint}")


def _header(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as exc:
        raise CxrError(f"cannot read {path}: {exc}") from None


def _read(path: Path, columns: list[str], hint: str) -> pd.DataFrame:
    """Only `columns` of a CSV (plain or gzipped), as strings with blanks as ''."""
    header = _header(path)
    missing = [c for c in columns if c not in header]
    if missing:
        raise CxrError(f"{path.name} has no column {', '.join(map(repr, missing))} (columns: {', '.join(header)}); {hint}")
    try:
        df = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise CxrError(f"cannot read {path}: {exc}") from None
    return df[columns].apply(lambda s: s.str.strip()).astype(object)


def _numeric(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return df[columns].apply(lambda s: pd.to_numeric(s, errors="coerce")).astype(float)


def _match(requested: tuple[str, ...] | list[str], available: list[str], source: str, aliases: dict[str, str] | None = None) -> list[str]:
    """Map user-typed class names to the release's spelling (case, spaces and underscores ignored)."""

    def key(s: str) -> str:
        return re.sub(r"[\s_]+", " ", s.strip().lower())

    lookup = {key(a): a for a in available}
    out = []
    for name in requested:
        k = key((aliases or {}).get(key(name), name))
        if k not in lookup:
            raise CxrError(f"{name!r} is not a label of {source}; its labels: {', '.join(available)} (pass one with --finding / --normal)")
        out.append(lookup[k])
    return out


def _resolve_names(options: CohortOptions, available: list[str], source: str, aliases: dict[str, str] | None = None) -> tuple[list[str], str, str]:
    findings = _match(options.findings, available, source, aliases)
    normal = _match([options.normal], available, source, aliases)[0] if options.normal else ""
    renamed = [f"{a!r} is {b!r} in {source}" for a, b in zip([*options.findings, options.normal], [*findings, normal]) if a and a.lower() != b.lower()]
    if len({*findings, normal} - {""}) < len(findings) + bool(normal):
        raise CxrError(f"the classes {', '.join([*findings, normal])} name the same label twice; choose distinct ones")
    return findings, normal, "; ".join(renamed)


def _list_mimic(root: Path, dirs: list[Path], options: CohortOptions) -> _Listing:
    hint = "download it from PhysioNet's MIMIC-CXR-JPG 2.0.0 page next to files/, or pass --labels-dir"
    paths = {k: _find(dirs, (stem,), f"MIMIC-CXR-JPG {k} file", hint) for k, stem in MIMIC_TABLES.items()}
    findings, normal, renamed = _resolve_names(options, MIMIC_FINDINGS, "MIMIC-CXR")
    ids = ["subject_id", "study_id"]
    col_hint = "is this MIMIC-CXR-JPG 2.0.0? its files keep their original columns"
    meta = _read(paths["metadata"], ["dicom_id", *ids, "ViewPosition"], col_hint)
    split = _read(paths["split"], ["dicom_id", "split"], col_hint).drop_duplicates("dicom_id")
    meta = meta.merge(split, on="dicom_id", how="left").fillna({"split": ""})
    base = root.parent if root.name == "files" and not (root / "files").is_dir() else root
    files, sep = str(base / "files"), os.sep
    images = pd.DataFrame({
        "image_id": meta["dicom_id"],
        "path": [f"{files}{sep}p{s[:2]}{sep}p{s}{sep}s{t}{sep}{d}.jpg"  # plain strings: pathlib is slow for 377,000 rows
                 for s, t, d in zip(meta["subject_id"], meta["study_id"], meta["dicom_id"])],
        "group": meta["subject_id"],
        "study": meta["study_id"],
        "view": meta["ViewPosition"],
        "split": meta["split"],
        "study_id": meta["study_id"],
        "official_split": meta["split"],
    })
    extra = []
    if options.patients:  # MIMIC-IV's patients table: sex and anchor age (an age band; never the shifted dates)
        patients = _read(Path(options.patients), ["subject_id", "gender", "anchor_age"],
                         "pass MIMIC-IV's hosp/patients.csv(.gz) with --patients").drop_duplicates("subject_id")
        joined = meta[["subject_id"]].merge(patients, on="subject_id", how="left").fillna("")
        joined.index = images.index
        extra = _demographics(images, joined["gender"], joined["anchor_age"])
    labels, labelled = {}, {}
    for lab in ("chexpert", "negbio"):
        table = _read(paths[lab], [*ids, *dict.fromkeys([*findings, *([normal] if normal else [])])], col_hint)
        table = table.drop_duplicates(ids)
        table["_labelled"] = True
        joined = meta[ids].merge(table, on=ids, how="left")  # left join keeps metadata order and length
        joined.index = images.index
        labels[lab] = _numeric(joined, [c for c in joined.columns if c not in ids and c != "_labelled"])
        labelled[lab] = joined["_labelled"].eq(True)
    return _Listing(images, labels, labelled, findings, normal, ["study_id", "official_split", *extra],
                    f"images in {paths['metadata'].name}", note=renamed)


def _list_chexpert(root: Path, dirs: list[Path], options: CohortOptions) -> _Listing:
    candidates = dirs + [d for d in sorted(root.glob("CheXpert*")) if d.is_dir()]
    wanted = {"train": ("train",), "validate": ("valid",), "all": ("train", "valid")}
    if options.split == "test":
        raise CxrError("CheXpert's train.csv and valid.csv hold no test split; use --split train, validate or all")
    found: dict[str, Path] = {}
    for d in candidates:
        for stem in ("train", "valid"):
            for suffix in (".csv", ".csv.gz"):
                if stem not in found and (d / f"{stem}{suffix}").is_file():
                    found[stem] = d / f"{stem}{suffix}"
        if found:
            break
    if not any(s in found for s in wanted[options.split]):
        raise CxrError(f"CheXpert {' and '.join(s + '.csv' for s in wanted[options.split])} not found in {root} or its CheXpert-v1.0* "
                       "folder; pass the folder that holds train.csv and valid.csv (or its parent)")
    frames = []
    findings = normal = renamed = None
    for stem in wanted[options.split]:
        if stem not in found:
            continue
        path = found[stem]
        available = [h for h in _header(path) if h not in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")]
        findings, normal, renamed = _resolve_names(options, available, "CheXpert")
        demographics = [c for c in ("Sex", "Age") if c in _header(path)]
        columns = ["Path", "Frontal/Lateral", "AP/PA", *demographics, *dict.fromkeys([*findings, *([normal] if normal else [])])]
        df = _read(path, columns, "is this CheXpert v1.0? its CSVs keep their original columns")
        df["_split"] = "train" if stem == "train" else "validate"
        df["_base"] = str(_chexpert_base(root, path))
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    rel = [_chexpert_relative(p) for p in df["Path"]]
    parts = [r.split("/") for r in rel]
    frontal = df["Frontal/Lateral"].str.lower() == "frontal"
    images = pd.DataFrame({
        "image_id": rel,
        "path": [f"{b}{os.sep}{r.replace('/', os.sep)}" for b, r in zip(df["_base"], rel)],
        "group": [p[-3] if len(p) >= 3 else r for p, r in zip(parts, rel)],
        "study": ["/".join(p[-3:-1]) if len(p) >= 3 else r for p, r in zip(parts, rel)],
        "view": np.where(frontal, df["AP/PA"].str.upper().replace("", "FRONTAL"), "LATERAL"),
        "split": df["_split"],
    })
    images["study_id"] = images["study"]
    images["official_split"] = images["split"]
    extra = _demographics(images, df.get("Sex"), df.get("Age"))
    labels = _numeric(df, [c for c in df.columns if c not in ("Path", "Frontal/Lateral", "AP/PA", "Sex", "Age", "_split", "_base")])
    labels.index = images.index
    yes = pd.Series(True, index=images.index)
    return _Listing(images, {"chexpert": labels}, {"chexpert": yes}, findings, normal, ["study_id", "official_split", *extra],
                    f"images in {' + '.join(found[s].name for s in wanted[options.split] if s in found)}", note=renamed)


def _demographics(images: pd.DataFrame, sexes: pd.Series | None, ages: pd.Series | None) -> list[str]:
    """Sex and age band columns for the manifest (core/data/subgroups.py); an exact age is never written."""
    from core.data.subgroups import age_band, sex

    extra = []
    if sexes is not None:
        images["sex"] = [sex(v) for v in sexes]
        extra.append("sex")
    if ages is not None:
        images["age_band"] = [age_band(v) for v in ages]
        extra.append("age_band")
    return extra


def _chexpert_base(root: Path, csv_path: Path) -> Path:
    """The dataset folder (the one holding train/ and valid/): next to the CSV, else ROOT or its CheXpert* folder."""
    for d in [csv_path.parent, root, *sorted(root.glob("CheXpert*"))]:
        if (d / "train").is_dir() or (d / "valid").is_dir():
            return d
    return csv_path.parent


def _chexpert_relative(path: str) -> str:
    """'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg' -> 'train/patient00001/study1/view1_frontal.jpg'.

    The dataset folder's own name is dropped, so a renamed folder still works.
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return "/".join(parts if parts and parts[0] in ("train", "valid", "test") else parts[1:])


def _list_nih(root: Path, dirs: list[Path], options: CohortOptions) -> _Listing:
    path = _find(dirs, NIH_ENTRIES, "NIH ChestX-ray14 label file",
                 "download Data_Entry_2017.csv from the NIH Clinical Center box next to images/, or pass --labels-dir")
    header = _header(path)  # bracketed names hold commas: 'OriginalImage[Width', 'Height]', ... and often a trailing ''
    wanted = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise CxrError(f"{path.name} has no column {', '.join(map(repr, missing))} (columns: {', '.join(header)}); "
                       "is this the NIH ChestX-ray14 Data_Entry_2017 file?")
    wanted += [c for c in ("Patient Gender", "Patient Age") if c in header]  # for subgroups, when the file has them
    positions = [header.index(c) for c in wanted]
    try:  # by position: the header and the rows need not agree on the trailing empty column
        df = pd.read_csv(path, header=None, skiprows=1, usecols=positions, dtype=str, keep_default_na=False, index_col=False)
    except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
        raise CxrError(f"cannot read {path}: {exc}") from None
    df = df[positions].astype(object)
    df.columns = wanted
    df = df.apply(lambda s: s.str.strip())
    df = df[df["Image Index"] != ""].drop_duplicates("Image Index").reset_index(drop=True)
    tags = df["Finding Labels"].str.split("|").map(lambda ts: [t.strip() for t in ts if t.strip()])
    available = sorted({*NIH_LABELS, *(t for ts in tags for t in ts)})
    findings, normal, renamed = _resolve_names(options, available, "NIH ChestX-ray14", NIH_ALIASES)
    labels = pd.DataFrame({c: tags.map(lambda ts, c=c: 1.0 if c in ts else 0.0) for c in dict.fromkeys([*findings, *([normal] if normal else [])])})

    split = pd.Series("", index=df.index, dtype=object)
    if options.split == "validate":
        raise CxrError("NIH ChestX-ray14 has only an official train_val and test split; use --split train, test or all")
    for name, file in NIH_SPLIT_LISTS.items():
        lst = next((d / file for d in dirs if (d / file).is_file()), None)
        if lst is None:
            if options.split == name:
                raise CxrError(f"{file} not found in {path.parent}; download it with the NIH release, or use --split all")
            continue
        members = set(lst.read_text(encoding="utf-8").split())
        split[df["Image Index"].isin(members)] = name

    on_disk = _nih_images(root)
    images = pd.DataFrame({
        "image_id": df["Image Index"],
        "path": [on_disk.get(name, str(root / "images" / name)) for name in df["Image Index"]],
        "group": df["Patient ID"],
        "study": df["Image Index"],  # every NIH image is its own examination
        "view": df["View Position"],
        "split": split,
        "follow_up": df["Follow-up #"],
        "official_split": split,
    })
    extra = _demographics(images, df.get("Patient Gender"), df.get("Patient Age"))
    note = "; ".join(n for n in (f"{len(on_disk)} image files found under images*/", renamed) if n)
    yes = pd.Series(True, index=images.index)
    return _Listing(images, {"nih": labels}, {"nih": yes}, findings, normal, ["follow_up", "official_split", *extra],
                    f"images in {path.name}", note=note, has_uncertain=False)


def _nih_images(root: Path) -> dict[str, str]:
    """Image name -> path, from images/ and the split download's images_001/images/ ... images_012/images/."""
    folders = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    found: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_file() and e.name not in found:
                    found[e.name] = e.path
    return found
