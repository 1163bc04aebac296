"""Sweeps: the product of a grid of settings, run as one group on identical splits so paired tests between runs are valid."""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import TYPE_CHECKING

from core import CxrError
from core.ids import new_sweep_id
from core.config import RunConfig, apply_overrides, auto_name

if TYPE_CHECKING:  # the engine (torch) is imported only to run: parsing and checking a grid stays instant
    from core.training.engine import Progress, RunResult
    from core.results.store import Store

# Settings that change which images go where: a sweep over them would compare runs on other splits.
SPLIT_FIELDS = {"data", "source", "path_column", "label_column", "group_column", "positive_labels", "fold_column", "folds", "seed",
                "group_by_patient", "repeats", "exclude_label_errors"}


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """`["max_iterations=250,500", "backbone=resnet18,resnet50"]` -> {field: [values]} (validated names)."""
    known = {f.name for f in fields(RunConfig)}
    grid: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise CxrError(f"--grid expects field=v1,v2,..., got {spec!r} (e.g. --grid max_iterations=250,500,1000)")
        if name not in known:
            apply_overrides(RunConfig(), [f"{name}=0"])  # raises the standard unknown-setting message
        if name in SPLIT_FIELDS:
            raise CxrError(f"a sweep keeps the same splits for every run, so {name} cannot vary; run separate sweeps instead")
        grid[name] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise CxrError("a sweep needs at least one --grid field=v1,v2,...")
    return grid


def expand(base: RunConfig, grid: dict[str, list[str]]) -> list[tuple[dict[str, str], RunConfig]]:
    """Every combination as (the varying values, the full validated config); invalid values fail before any run."""
    names = list(grid)
    combos = []
    for values in itertools.product(*(grid[n] for n in names)):
        varying = dict(zip(names, values))
        combos.append((varying, apply_overrides(base, [f"{k}={v}" for k, v in varying.items()])))
    return combos


def run_sweep(base: RunConfig, grid: dict[str, list[str]], *, store: Store, preset: str = "", progress: Progress | None = None,
              sweep_id: str | None = None) -> tuple[str, list[RunResult]]:
    """Run every combination; the first run's splits are reused by all the others."""
    from core.training.engine import begin_run, run_cross_validation, train_plans

    combos = expand(base, grid)
    sweep_id = sweep_id or new_sweep_id()
    results: list[RunResult] = []
    splits: dict[str, list[int]] | None = None
    if base.executor == "ray":
        # every run created first (the first run's splits reused by the others), then all their folds in one pool of Ray
        # tasks, so a 3 x 10 sweep keeps eight GPUs busy instead of ten folds at a time
        plans = []
        for _, cfg in combos:
            plans.append(begin_run(cfg, store=store, preset=preset, name=auto_name(cfg, preset, among=grid), progress=progress,
                                   sweep_id=sweep_id, fixed_splits=splits))
            if splits is None:
                splits = _splits_of(store, plans[0].run_id)
        return sweep_id, train_plans(plans, store=store, progress=progress)
    for _, cfg in combos:
        # named by the preset and the swept values (`quick · lr 1e-4`): what tells the sweep's runs apart
        result = run_cross_validation(cfg, store=store, preset=preset, name=auto_name(cfg, preset, among=grid), progress=progress,
                                      sweep_id=sweep_id, fixed_splits=splits)
        if splits is None:
            splits = _splits_of(store, result.run_id)
        results.append(result)
    return sweep_id, results


def _splits_of(store: Store, run_id: str) -> dict[str, list[int]]:
    """image_id -> its fold in each repeat, as the sweep's first run stored them (the later runs reuse them)."""
    table = store.all_splits(run_id)
    out: dict[str, list[int]] = {}
    for image_id, fold in zip(table["image_id"], table["fold"].astype(int)):  # ordered by repeat
        out.setdefault(image_id, []).append(int(fold))
    return out
