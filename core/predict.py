"""Predict one image with a finished run: the ensemble of its fold models, the call at the run's threshold, and a Grad-CAM.

Needs a run made with `save_models=true` (each fold's weights under runs/<run_id>/fold_<k>.pt).
Weights load with `weights_only=True`; uploads are decoded by the same bounded decoder as data
sets, so an oversized or non-image upload is refused with a reason. A research tool, not a
diagnosis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import CxrError
from core.data.decode import DecodeError, decode_bytes
from core.explain import grad_cams
from core.models import build_model
from core.store import Store
from core.train import predict_probs


@dataclass(frozen=True)
class Prediction:
    prob_positive: float  # mean over the fold models
    fold_probs: list[float]  # each fold model's positive-class probability
    threshold: float
    call: str  # the class called at `threshold`
    positive_class: str
    gray: np.ndarray  # (size, size) uint8, the image as the models saw it
    cam: np.ndarray  # (size, size) float in [0, 1], mean of the fold models' positive-class maps


def fold_model_files(store: Store, run_id: str) -> list[Path]:
    run = store.run(run_id)
    files = [store.run_dir(run_id) / f"fold_{k}.pt" for k in range(int(run["folds"]))]
    return files if all(f.is_file() for f in files) else []


def predict_image(store: Store, run_id: str, data: bytes, *, threshold: float = 0.5, device: str = "cpu") -> Prediction:
    """Classify one encoded image (PNG, JPEG, DICOM, ...) with the run's fold-model ensemble."""
    run = store.run(run_id)
    if run["status"] != "finished":
        raise CxrError(f"run {run_id} is {run['status']}; predictions need a finished run")
    files = fold_model_files(store, run_id)
    if not files:
        raise CxrError(f"run {run_id} kept no fold models; start a run with --set save_models=true to predict with it")
    cfg = json.loads(run["config"])
    classes = json.loads(run["classes"])
    positive = classes.index(run["positive_class"])
    try:
        gray = decode_bytes(data, cfg["image_size"])
    except DecodeError as exc:
        raise CxrError(f"cannot use this file: {exc}; upload a PNG, JPEG or DICOM radiograph") from None
    dev = torch.device(device)
    x = torch.from_numpy(np.array(gray))[None]  # a writable copy (decoders may return read-only views)
    probs, cams = [], []
    for file in files:
        model, _ = build_model(cfg["backbone"], len(classes), "none")
        try:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as exc:  # damaged or foreign file in the run folder
            raise CxrError(f"cannot load {file.name} of run {run_id}: {type(exc).__name__}") from None
        model.to(dev)
        probs.append(float(predict_probs(model, x, dev)[0, positive]))
        cams.append(grad_cams(model, cfg["backbone"], x, [positive], dev)[0])
    mean = float(np.mean(probs))
    negative = next((c for c in classes if c != run["positive_class"]), "other") if len(classes) == 2 else "other"
    return Prediction(mean, probs, threshold, run["positive_class"] if mean >= threshold else negative, run["positive_class"],
                      gray, np.mean(cams, axis=0))
