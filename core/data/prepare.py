"""From a RunConfig's data settings to pixels and labels in memory: manifest, cache, exclusions, class indices.

Decoding happens once per file and size (core.data.cache); what cannot be decoded is
excluded with its reason and the rest of the data set goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core import CxrError
from core.config import RunConfig
from core.data.cache import ImageCache
from core.data.sources import Manifest, build_manifest
from core.data.splits import parse_user_folds

log = logging.getLogger(__name__)
CACHE_DIR_ENV = "CXR_CACHE_DIR"


@dataclass
class PreparedData:
    """The included images of a data set, ready for any fold."""

    manifest: Manifest  # full table, with content_hash and excluded_reason filled in
    pixels: np.ndarray  # (N, size, size) uint8, included images only, in `image_ids` order
    labels: np.ndarray  # (N,) int class indices into `classes`
    groups: np.ndarray | None  # (N,) patient ids, or None when the source has none
    image_ids: list[str]
    classes: list[str]
    positive: int  # index of the positive class
    dataset_id: str  # fingerprint of (image_id, content, label) of the included images
    mask_paths: list[str] | None = None  # lesion mask per image ('' = none), when the source has masks
    user_folds: np.ndarray | None = None  # (N,) 0-based folds from the manifest's fold column, when the user supplies the split


NORMAL_NAMES = {"normal", "no finding", "negative", "healthy", "none", "0"}


def default_positive(classes: list[str]) -> int:
    """With two classes and one of them named like 'Normal' / 'No Finding', the other is positive; else the last in sorted order."""
    normal = [k for k, c in enumerate(classes) if c.strip().lower() in NORMAL_NAMES]
    if len(classes) == 2 and len(normal) == 1:
        return 1 - normal[0]
    return len(classes) - 1


def cache_dir_for(runs_dir: Path) -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path(runs_dir) / "cache")


def prepare_data(cfg: RunConfig, *, cache_dir: Path, progress: Callable[[int, int], None] | None = None,
                 excluded: dict[str, str] | None = None) -> PreparedData:
    """Build the manifest, load every image through the cache and index the classes.

    `excluded` (image_id -> reason) leaves those images out before loading, each counted with its reason in the
    data flow like an unreadable file (e.g. reviewers' label errors, `exclude_label_errors`).

    Raises:
        CxrError: no usable image, or the positive class is not among the labels.
    """
    manifest = build_manifest(
        cfg.data,
        source=cfg.source,
        path_column=cfg.path_column,
        label_column=cfg.label_column,
        group_column=cfg.group_column,
        positive_labels=cfg.positive_labels,
        fold_column=cfg.fold_column,
        subgroup_columns=cfg.subgroup_columns,
    )
    table = manifest.table.copy()
    table["content_hash"] = ""
    if excluded:
        chosen = (table["excluded_reason"] == "") & table["image_id"].isin(list(excluded))
        table.loc[chosen, "excluded_reason"] = table.loc[chosen, "image_id"].map(excluded)
    todo = table.index[table["excluded_reason"] == ""]
    loaded = ImageCache(cache_dir).load_many(table.loc[todo, "path"].tolist(), cfg.image_size, progress=progress)
    pixels = []
    for idx, item in zip(todo, loaded):
        table.at[idx, "content_hash"] = item.content_hash
        if item.pixels is None:
            table.at[idx, "excluded_reason"] = item.excluded_reason
        else:
            pixels.append(item.pixels)
    manifest.table = table
    included = table[table["excluded_reason"] == ""]
    n_bad = len(table) - len(included)
    if n_bad:
        reasons = table.loc[table["excluded_reason"] != "", "excluded_reason"].value_counts()
        log.warning("%d of %d images excluded: %s", n_bad, len(table), "; ".join(f"{r} ({n})" for r, n in reasons.items()))
    if included.empty:
        raise CxrError(f"no usable image in {cfg.data}: all {len(table)} files were excluded (first reason: {table['excluded_reason'].iloc[0]})")

    classes = sorted(included["label"].unique())
    if cfg.positive_class:
        if cfg.positive_class not in classes:
            raise CxrError(f"positive_class {cfg.positive_class!r} is not a label of the data; labels: {', '.join(classes)}")
        positive = classes.index(cfg.positive_class)
    else:
        positive = default_positive(classes)
    has_groups = bool((included["group"] != "").all())
    fingerprint = hashlib.sha256(
        "\n".join(sorted(f"{r.image_id}\t{r.content_hash}\t{r.label}" for r in included.itertuples())).encode()
    ).hexdigest()[:16]
    return PreparedData(
        manifest=manifest,
        pixels=np.stack(pixels) if pixels else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8),
        labels=np.array([classes.index(v) for v in included["label"]], dtype=np.int64),
        groups=included["group"].to_numpy() if has_groups else None,
        image_ids=included["image_id"].tolist(),
        classes=classes,
        positive=positive,
        dataset_id=fingerprint,
        mask_paths=included["mask_path"].tolist() if (included["mask_path"] != "").any() else None,
        user_folds=parse_user_folds(included["fold"].tolist(), column=cfg.fold_column) if cfg.fold_column else None,
    )
