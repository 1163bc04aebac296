"""What the pages need from the engine, as plain data (no Streamlit, no torch): the pages stay thin."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.data.sources import DEMO_MARKER
from core.store import Store


def demo_summary(folder: Path) -> dict | None:
    """Images per class and patients of a demo folder, or None when there is none."""
    manifest = Path(folder) / "manifest.csv"
    if not (Path(folder) / DEMO_MARKER).is_file() or not manifest.is_file():
        return None
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return {"per_class": table["label"].value_counts().sort_index().to_dict(), "patients": table["patient_id"].nunique()}


def make_demo(folder: Path, *, n_per_class: int = 200, size: int = 256, seed: int = 0) -> Path:
    from core.data.phantom import make_demo_dataset

    return make_demo_dataset(folder, n_per_class=n_per_class, size=size, seed=seed)


def runs_table(runs_dir: Path) -> pd.DataFrame:
    """The runs list as shown on the home page: readable column names, percentages for the metrics."""
    runs = Store(Path(runs_dir)).list_runs()
    if runs.empty:
        return runs
    table = pd.DataFrame({
        "run": runs["run_id"],
        "status": runs["status"],
        "preset": runs["preset"],
        "data": runs["synthetic"].map({True: "synthetic demo", False: "user data"}),
        "images": runs["n_images"],
        "folds": runs["folds"],
        "AUC % (pooled)": (runs["auc"] * 100).round(2),
        "accuracy %": (runs["accuracy"] * 100).round(1),
        "sensitivity %": (runs["sensitivity"] * 100).round(1),
        "specificity %": (runs["specificity"] * 100).round(1),
        "training s": runs["train_seconds"].round(1),
        "weights": runs["weights_used"],
        "device": runs["device"],
        "started": runs["created_at"],
    })
    return table
