"""(d) A fold's heat maps: the engine's against pytorch-grad-cam called one pass per target, same model, images and maps.

Ours: `core.training.explain.cams_for_targets` as `explain_fold` calls it: both targets of the gallery (the
predicted and the positive class) from one forward pass per batch, each backward only from the target layer on,
and every batch padded to one shape on a GPU (`core.training.runtime.fixed_batches`).

Baseline: the library as the engine called it before: `grad_cams` (pytorch-grad-cam's GradCAM) for the positive
class of every image, then again for the images predicted negative, each pass with a backward through the whole
network and, on a GPU, one cuDNN autotuning per new batch shape.

Each side warms up on one fold, then maps `folds` more, each with its own images and its own mix of predictions
(seeded, about half predicted positive, as a trained model's held-out fold), so a remainder batch of a new size
costs the baseline what it costs in a run. The maps of both sides are compared (`max_abs_diff`).
Model: the protocol's backbone and image size, untrained (weights none: the time is the same), prepared as a run's
(`core.training.runtime`: channels_last on a GPU); the method is the protocol's (`gradcam`, no mirror).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.sizes import BenchSize
from core.config import RunConfig
from core.training.explain import cams_for_targets, grad_cams
from core.training.models import build_model
from core.training.runtime import execution_for

POSITIVE = 1


def _folds(size: BenchSize, count: int) -> list[tuple[torch.Tensor, np.ndarray]]:
    """`count` folds of random images, each with seeded predicted classes (about half positive)."""
    rng = np.random.default_rng(0)
    n = size.heatmap_images
    return [(torch.from_numpy(rng.integers(0, 256, (n, size.protocol_size, size.protocol_size), dtype=np.uint8)),
             (rng.random(n) < 0.5).astype(int)) for _ in range(count)]


def ours(model, backbone: str, images: torch.Tensor, pred: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    (positive, predicted), _ = cams_for_targets(model, backbone, images, [[POSITIVE] * len(images), [int(p) for p in pred]], device)
    return positive, predicted


def library(model, backbone: str, images: torch.Tensor, pred: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    positive = grad_cams(model, backbone, images, [POSITIVE] * len(images), device)
    predicted = positive.copy()
    other = np.flatnonzero(pred != POSITIVE)
    if len(other):
        predicted[other] = grad_cams(model, backbone, images[torch.from_numpy(other)], [int(pred[k]) for k in other], device)
    return positive, predicted


def _timed(fn, model, backbone: str, folds, device: torch.device) -> tuple[float, list]:
    maps = []
    fn(model, backbone, *folds[0], device)  # warm-up: first calls, the common shapes' autotuning
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for images, pred in folds[1:]:
        maps.append(fn(model, backbone, images, pred, device))  # numpy arrays: each call ends synchronised
    return time.perf_counter() - t0, maps


def run(size: BenchSize, device: torch.device, *, folds: int = 3, log=print) -> dict:
    backbone = size.protocol_backbone
    cfg = RunConfig(backbone=backbone, weights="none", image_size=size.protocol_size, device=device.type)
    torch.manual_seed(0)
    model, _ = build_model(backbone, 2, "none")
    execution_for(cfg, device).prepare_model(model)
    data = _folds(size, folds + 1)
    log(f"(d) heat maps: {folds} folds x {size.heatmap_images} images, {backbone} at {size.protocol_size} px, two targets")
    ours_s, ours_maps = _timed(ours, model, backbone, data, device)
    library_s, library_maps = _timed(library, model, backbone, data, device)
    diff = max(float(np.abs(a - b).max()) for mine, theirs in zip(ours_maps, library_maps) for a, b in zip(mine, theirs))
    images = folds * size.heatmap_images
    log(f"    ours {ours_s:.2f} s, pytorch-grad-cam {library_s:.2f} s, largest difference between their maps {diff:.1e}")
    return {
        "backbone": backbone, "image_size": size.protocol_size, "folds": folds, "images_per_fold": size.heatmap_images,
        "method": "gradcam", "targets": ["positive", "predicted"],
        "ours": {"seconds": ours_s, "img_per_s": images / ours_s},
        "library": {"seconds": library_s, "img_per_s": images / library_s},
        "max_abs_diff": diff,
    }
