"""Typed records read back from the store: what the pages, reports and exports are handed instead of raw rows.

Why: the engine receives one typed `RunConfig`; the read side used to hand out rows as dicts with a
dozen string keys, and derived the same facts again in several places (the positive class's
index rebuilt from JSON, the negative class named "rest" in some places and "other" in another,
the stored configuration parsed back as a plain dict). Each derived fact is defined here once.
No SQL (core/results/store.py holds every statement), no torch, no Streamlit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime
from typing import Any

from core.config import RunConfig


def negative_class(classes: list[str] | tuple[str, ...], positive: str) -> str:
    """The class a binary call names when it is not positive: the other class, or "not <positive>" with more than two."""
    if len(classes) == 2:
        return next(c for c in classes if c != positive)
    return f"not {positive}"


def _value(v: Any) -> Any:
    """A stored value as Python: DuckDB's NULLs arrive in pandas as None, NaN or NaT; all become None."""
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if type(v).__name__ == "NaTType":
        return None
    return v


def _number(v: Any) -> float | None:
    v = _value(v)
    return None if v is None else float(v)


def config_from_json(text: str | None) -> RunConfig:
    """The stored configuration as a RunConfig; settings this version no longer knows are dropped, missing ones take defaults."""
    if not text:
        return RunConfig()
    values = json.loads(text)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig.from_dict({k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class RunSummary:
    """A run as a list of runs shows it: enough to name, choose and filter it.

    Why apart from RunRecord: pages list every finished run on each rerun, thousands in a lab's store;
    reading these few columns as tuples takes milliseconds where whole records took 0.3-0.5 s.
    """

    run_id: str
    name: str
    status: str
    preset: str
    auc: float | None
    folds: int
    sweep_id: str | None
    created_at: datetime | None
    tags: str

    COLUMNS = ("run_id", "name", "status", "preset", "auc", "folds", "sweep_id", "created_at", "tags")

    @classmethod
    def from_tuple(cls, row: tuple) -> "RunSummary":
        v = dict(zip(cls.COLUMNS, (_value(x) for x in row)))
        return cls(run_id=v["run_id"], name=v["name"] or v["run_id"], status=v["status"] or "", preset=v["preset"] or "",
                   auc=_number(v["auc"]), folds=int(v["folds"] or 0), sweep_id=v["sweep_id"], created_at=v["created_at"],
                   tags=v["tags"] or "")


@dataclass(frozen=True)
class RunRecord:
    """One run as stored: its configuration, classes, state, metrics and where and how it computed.

    Metrics are None until the run has finished (or when a fold had one class only).
    """

    run_id: str
    name: str
    status: str
    preset: str
    sweep_id: str | None
    created_at: datetime | None
    finished_at: datetime | None
    config_json: str  # parsed on first use (`config`): listing thousands of runs should not validate thousands of configs
    dataset_id: str | None
    synthetic: bool
    classes: tuple[str, ...]
    positive_class: str
    n_images: int
    folds: int
    grouped: bool  # folds were made by patient
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    auc: float | None
    auc_mean_folds: float | None
    pointing_game: float | None  # Grad-CAM localisation over positives with masks (None without masks)
    pointing_chance: float | None
    energy_in_mask: float | None
    energy_chance: float | None
    train_seconds: float | None
    total_seconds: float | None
    device: str
    weights_used: str
    weights_message: str
    code_version: str
    torch_version: str
    torchvision_version: str
    leak_status: str | None
    leakage: str | None
    error: str | None
    tags: str
    notes: str
    pid: int | None
    host: str | None
    pid_start: str | None

    COLUMNS = ("run_id", "name", "status", "preset", "sweep_id", "created_at", "finished_at", "config", "dataset_id", "synthetic",
               "classes", "positive_class", "n_images", "folds", "grouped", "accuracy", "sensitivity", "specificity", "auc", "auc_mean_folds",
               "pointing_game", "pointing_chance", "energy_in_mask", "energy_chance",
               "train_seconds", "total_seconds", "device", "weights_used", "weights_message", "code_version", "torch_version",
               "torchvision_version", "leak_status", "leakage", "error", "tags", "notes", "pid", "host", "pid_start")

    @classmethod
    def from_row(cls, row: dict) -> "RunRecord":
        """From a `runs` row (a dict of the columns in COLUMNS, as the store's query returns them)."""
        v = {k: _value(row.get(k)) for k in cls.COLUMNS}
        classes = tuple(json.loads(v["classes"])) if v["classes"] else ()
        return cls(
            run_id=v["run_id"], name=v["name"] or v["run_id"], status=v["status"] or "", preset=v["preset"] or "",
            sweep_id=v["sweep_id"], created_at=v["created_at"], finished_at=v["finished_at"], config_json=v["config"] or "",
            dataset_id=v["dataset_id"], synthetic=bool(v["synthetic"]), classes=classes, positive_class=v["positive_class"] or "",
            n_images=int(v["n_images"] or 0), folds=int(v["folds"] or 0), grouped=bool(v["grouped"]),
            **{k: _number(v[k]) for k in ("accuracy", "sensitivity", "specificity", "auc", "auc_mean_folds", "pointing_game",
                                          "pointing_chance", "energy_in_mask", "energy_chance", "train_seconds", "total_seconds")},
            device=v["device"] or "", weights_used=v["weights_used"] or "", weights_message=v["weights_message"] or "",
            code_version=v["code_version"] or "", torch_version=v["torch_version"] or "", torchvision_version=v["torchvision_version"] or "",
            leak_status=v["leak_status"], leakage=v["leakage"], error=v["error"], tags=v["tags"] or "", notes=v["notes"] or "",
            pid=None if v["pid"] is None else int(v["pid"]), host=v["host"], pid_start=v["pid_start"],
        )

    @cached_property
    def config(self) -> RunConfig:
        return config_from_json(self.config_json)

    @property
    def positive_index(self) -> int:
        """Index of the positive class in `classes`, i.e. in each prediction's `label_index` and `probs`."""
        return self.classes.index(self.positive_class)

    @property
    def negative_class(self) -> str:
        return negative_class(self.classes, self.positive_class)

    @property
    def owner(self) -> dict:
        """What core.jobs.lifecycle needs to tell whether the run's process is alive."""
        return {"status": self.status, "pid": self.pid, "host": self.host, "pid_start": self.pid_start}
