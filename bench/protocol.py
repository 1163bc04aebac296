"""(c) The paper protocol end to end, through the engine: decode (cold cache), k folds of training, out-of-fold
evaluation, Grad-CAM of every held-out image (so of every positive), pooled metrics, all written to a throw-away store.

Data: the synthetic demo phantom (generated first, not timed). Weights: none, since a timing
benchmark must not depend on a download; ImageNet weights cost the same per iteration.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from bench.sizes import BenchSize
from core.config import RunConfig
from core.training.runtime import pack_size


def protocol_config(size: BenchSize, data: Path, device: torch.device) -> RunConfig:
    return RunConfig(
        data=str(data), backbone=size.protocol_backbone, weights="none", image_size=size.protocol_size,
        batch_size=size.batch_size, max_iterations=size.protocol_iterations, folds=size.protocol_folds,
        eval_every=50, gradcam=True, gradcam_max=0, device=device.type,
    )


class StageClock:
    """A progress callback that notes when the run's events happen, to split its wall time into stages."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.events: list[tuple[float, str, str]] = []  # (time, event, phase)

    def __call__(self, event: dict) -> None:
        self.events.append((time.perf_counter(), event.get("event", ""), event.get("phase", "")))

    def stages(self, total: float) -> dict[str, float]:
        """Seconds: until the first training iteration ended (decoding, building models, warm-up and capture of the
        first step), training (then to the last training iteration, held-out checks included), the folds' ends
        (held-out predictions, Grad-CAM, writing each fold), and the rest (pooled metrics, closing the run)."""
        train = [t for t, name, phase in self.events if name == "iteration" and phase == "train"]
        ends = [t for t, name, _ in self.events if name == "fold_end"]
        if not train or not ends:
            return {}
        first, last, end = train[0] - self.start, train[-1] - self.start, max(ends) - self.start
        return {"to first iteration": first, "training": last - first, "evaluation, Grad-CAM, storing": end - last,
                "pooled metrics, closing": total - end}


def run(size: BenchSize, device: torch.device, workdir: Path, *, log=print) -> dict:
    from core.data.phantom import make_demo_dataset
    from core.training.engine import run_cross_validation
    from core.results.store import Store

    data = workdir / "demo"
    t0 = time.perf_counter()
    make_demo_dataset(data, n_per_class=size.protocol_n_per_class, size=size.protocol_phantom_px, seed=0)
    generate_s = time.perf_counter() - t0
    cfg = protocol_config(size, data, device)
    log(f"(c) protocol: {size.protocol_note()}")
    saved = os.environ.get("CXR_CACHE_DIR")
    os.environ["CXR_CACHE_DIR"] = str(workdir / "protocol_cache")  # a cold cache of its own, never the user's
    marks = StageClock()
    try:
        t0 = marks.start = time.perf_counter()
        result = run_cross_validation(cfg, store=Store(workdir / "runs"), preset="bench", name="bench protocol", progress=marks)
        seconds = time.perf_counter() - t0
    finally:
        if saved is None:
            os.environ.pop("CXR_CACHE_DIR", None)
        else:
            os.environ["CXR_CACHE_DIR"] = saved
    runs = Store(workdir / "runs").list_runs()
    train_seconds = float(runs.loc[runs["run_id"] == result.run_id, "train_seconds"].iloc[0])
    trained = size.protocol_folds * size.protocol_iterations * size.batch_size
    stages = marks.stages(seconds)
    log(f"    {seconds:.1f} s end to end ({train_seconds:.1f} s of it training), pooled AUC {result.metrics['auc']:.3f} (synthetic data)")
    log("    where the time went: " + ", ".join(f"{name} {value:.1f} s" for name, value in stages.items()))
    return {
        "scaled_down": size.scaled_down, "note": size.protocol_note(), "backbone": size.protocol_backbone,
        "image_size": size.protocol_size, "folds": size.protocol_folds, "iterations_per_fold": size.protocol_iterations,
        "batch_size": size.batch_size, "n_images": 2 * size.protocol_n_per_class, "weights": "none",
        "gradcam": "every held-out image (gradcam_max=0), both targets", "data": "synthetic demo phantom",
        "seconds": seconds, "train_seconds": train_seconds, "images_trained": trained,
        "train_img_per_s": trained / train_seconds if train_seconds > 0 else None,
        "auc": result.metrics["auc"], "data_generation_s": generate_s, "stages_s": stages,
        "folds_at_once": pack_size(cfg.parallel_folds, device=device, batch_size=cfg.batch_size, image_size=cfg.image_size, folds=cfg.folds),
    }
