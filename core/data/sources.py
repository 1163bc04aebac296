"""Manifest builders: every data source becomes one table (image_id, path, label, group, view, mask_path, excluded_reason).

Builders only list files and labels; whether a file can be decoded is decided later by the
cache, which fills `excluded_reason` instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core import CxrError
from core.data.subgroups import level as subgroup_level, parse_columns, variable_name

COLUMNS = ["image_id", "path", "label", "group", "view", "mask_path", "excluded_reason"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".dcm", ".dicom"}
DEMO_MARKER = "SYNTHETIC.txt"


@dataclass
class Manifest:
    """A data set as one table plus where it came from."""

    table: pd.DataFrame  # COLUMNS, one row per image, excluded rows kept with their reason
    source: str  # demo | folders | csv
    root: str  # the folder or CSV it was read from
    synthetic: bool  # demo phantom images: shown and reported as synthetic
    flow: dict | None = None  # the cohort flow (`<manifest stem>.flow.json`) when `python -m core cohort` wrote the manifest

    @property
    def included(self) -> pd.DataFrame:
        return self.table[self.table["excluded_reason"] == ""]


def existing_data_path(data: str) -> Path:
    """The data set's path, or a CxrError saying it is missing.

    Cheap (no image is read, torch is not loaded), so the CLI calls it before importing the
    engine: a mistyped `--data` is answered at once instead of after seconds of imports.
    """
    root = Path(data).expanduser()
    if not str(data).strip():
        raise CxrError("no data set given; pass --data PATH (make one with: python -m core demo-data --out data/demo)")
    if not root.exists():
        raise CxrError(f"data set {root} does not exist; check the path (or create demo data with python -m core demo-data)")
    return root


def build_manifest(
    data: str,
    *,
    source: str = "auto",
    path_column: str = "path",
    label_column: str = "label",
    group_column: str = "",
    positive_labels: str = "",
    fold_column: str = "",
    subgroup_columns: str = "",
) -> Manifest:
    """Read any supported source into a Manifest; `source='auto'` decides from what `data` is."""
    root = existing_data_path(data)
    kind = detect_source(root) if source == "auto" else source
    if kind == "demo":
        manifest = from_demo(root)
    elif kind == "folders":
        manifest = from_class_folders(root)
    elif kind == "csv":
        manifest = from_csv(root, path_column=path_column, label_column=label_column, group_column=group_column, fold_column=fold_column,
                            subgroup_columns=subgroup_columns)
    else:
        raise CxrError(f"unknown data source {kind!r}; choose auto, demo, folders or csv")
    if subgroup_columns.strip() and kind != "csv":
        raise CxrError("subgroup_columns needs a CSV manifest (columns such as site or scanner); leave it empty for demo or class folders")
    if fold_column and kind != "csv":
        raise CxrError("fold_column needs a CSV manifest (a column of fold numbers); leave it empty for demo or class folders")
    if positive_labels.strip():
        manifest.table = binarize(manifest.table, [v.strip() for v in positive_labels.split(",") if v.strip()])
    return manifest


def detect_source(root: Path) -> str:
    if root.is_file():
        if root.suffix.lower() in (".csv", ".gz"):
            return "csv"
        raise CxrError(f"{root} is a file but not a CSV manifest; pass a folder or a .csv file")
    if (root / DEMO_MARKER).is_file() and (root / "manifest.csv").is_file():
        return "demo"
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return "folders"
    if (root / "manifest.csv").is_file():
        return "csv"
    raise CxrError(
        f"{root} holds no sub-folders per class and no manifest.csv; "
        "put each class's images in its own sub-folder, or pass a CSV manifest"
    )


def from_demo(root: Path) -> Manifest:
    manifest = from_csv(root / "manifest.csv", path_column="path", label_column="label", group_column="patient_id")
    return Manifest(manifest.table, "demo", str(root), synthetic=True)


def from_class_folders(root: Path) -> Manifest:
    """One sub-folder per class; every non-hidden file below it is listed (bad ones are excluded later)."""
    rows = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(root).parts):
                rel = file.relative_to(root).as_posix()
                rows.append(_row(rel, str(file), class_dir.name))
    if not rows:
        raise CxrError(f"no files found in the class folders of {root}; each class needs its own sub-folder of images")
    return Manifest(_table(rows), "folders", str(root), synthetic=False)


def from_csv(csv_path: Path, *, path_column: str, label_column: str, group_column: str = "", fold_column: str = "",
             subgroup_columns: str = "") -> Manifest:
    """A CSV with user-chosen columns; relative paths are taken relative to the CSV's folder. Subgroup variables
    (core/data/subgroups.py: `sex`, `age`, `age_band` when present, and `subgroup_columns`) become `sg:<variable>`
    columns of the manifest, as bands and categories."""
    csv_path = csv_path if csv_path.is_file() else csv_path / "manifest.csv"
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CxrError(f"cannot read CSV manifest {csv_path}: {exc}") from None
    if not group_column and "group" in df.columns:
        group_column = "group"  # a column named `group` (as in cohort manifests) is the patient id unless another is chosen
    needed = {"path_column": path_column, "label_column": label_column}
    if group_column:
        needed["group_column"] = group_column
    if fold_column:
        needed["fold_column"] = fold_column
    for setting, column in needed.items():
        if column not in df.columns:
            raise CxrError(
                f"CSV {csv_path.name} has no column {column!r} (columns: {', '.join(df.columns)}); "
                f"choose one with --set {setting}=NAME"
            )
    base = csv_path.parent
    subgroups = parse_columns(subgroup_columns, list(df.columns))
    rows = []
    for rec in df.to_dict("records"):
        raw = rec[path_column].strip()
        path = Path(raw) if Path(raw).is_absolute() else base / raw
        mask = rec.get("mask_path", "").strip()
        rows.append(
            _row(
                rec.get("image_id", "").strip() or raw,
                str(path),
                rec[label_column].strip(),
                group=rec[group_column].strip() if group_column else "",
                view=rec.get("view", "").strip(),
                mask_path=str(base / mask) if mask else "",
                excluded="missing label" if not rec[label_column].strip() else ("no path" if not raw else ""),
            )
        )
        if fold_column:
            rows[-1]["fold"] = rec[fold_column].strip()
        for column in subgroups:
            rows[-1][f"sg:{variable_name(column)}"] = subgroup_level(column, rec[column])
    if not rows:
        raise CxrError(f"CSV manifest {csv_path} has no rows")
    extra = (["fold"] if fold_column else []) + [f"sg:{variable_name(c)}" for c in subgroups]
    return Manifest(_table(rows, extra=extra), "csv", str(csv_path), synthetic=False, flow=_read_flow(csv_path))


def _read_flow(csv_path: Path) -> dict | None:
    """The cohort flow written next to a cohort manifest, if any (shown on the Data page, stored with the data set)."""
    import json

    flow = csv_path.with_name(csv_path.stem + ".flow.json")
    try:
        return json.loads(flow.read_text(encoding="utf-8")) if flow.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged flow file must not stop the data set from loading


def binarize(table: pd.DataFrame, positives: list[str]) -> pd.DataFrame:
    """Map labels to two classes: the positive value(s) against everything else."""
    labels = set(table.loc[table["excluded_reason"] == "", "label"])
    unknown = [p for p in positives if p not in labels]
    if unknown:
        raise CxrError(
            f"positive label(s) {', '.join(map(repr, unknown))} not found; labels in the data: {', '.join(sorted(labels))}"
        )
    negatives = sorted(labels - set(positives))
    if not negatives:
        raise CxrError("every label was chosen as positive; at least one label must remain negative")
    pos_name = positives[0] if len(positives) == 1 else " / ".join(positives)
    neg_name = negatives[0] if len(negatives) == 1 else "Other"
    out = table.copy()
    is_pos = out["label"].isin(positives)
    out.loc[is_pos, "label"] = pos_name
    out.loc[~is_pos & (out["label"] != ""), "label"] = neg_name
    return out


def _row(image_id: str, path: str, label: str, *, group: str = "", view: str = "", mask_path: str = "", excluded: str = "") -> dict:
    return {
        "image_id": image_id,
        "path": path,
        "label": label,
        "group": group,
        "view": view,
        "mask_path": mask_path,
        "excluded_reason": excluded,
    }


def _table(rows: list[dict], extra: list[str] | None = None) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=COLUMNS + (extra or []))
    dupes = table["image_id"].duplicated(keep="first")
    table.loc[dupes & (table["excluded_reason"] == ""), "excluded_reason"] = "duplicate image_id"
    return table.reset_index(drop=True)
