"""Predict one image with a finished run: the ensemble of its fold models, the call at the run's threshold, and a Grad-CAM.

Needs a run made with `save_models=true` (each fold's weights under runs/<run_id>/fold_<k>.pt).
Weights load with `weights_only=True`; uploads are decoded by the same bounded decoder as data
sets, so an oversized or non-image upload is refused with a reason. A research tool, not a
diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core import CxrError
from core.data.decode import DecodeError, decode_bytes
from core.training.explain import cams_and_probs
from core.training.models import build_model
from core.results.records import RunRecord
from core.results.store import Store


@dataclass(frozen=True)
class Prediction:
    prob_positive: float  # mean over the fold models
    fold_probs: list[float]  # each fold model's positive-class probability
    threshold: float
    call: str  # the class called at `threshold`
    positive_class: str
    gray: np.ndarray  # (size, size) uint8, the image as the models saw it
    cam: np.ndarray  # (size, size) float in [0, 1], mean of the fold models' positive-class maps (the run's heat-map method)
    negative_class: str = ""  # what a call below the threshold names

    def call_at(self, threshold: float) -> str:
        """The class called at another threshold (the probabilities do not depend on it)."""
        return self.positive_class if self.prob_positive >= threshold else self.negative_class


@dataclass(frozen=True)
class Ensemble:
    """A finished run's fold models, loaded once: the Predict page keeps one per run, so a second image costs a forward pass."""

    run: RunRecord
    models: tuple[torch.nn.Module, ...]
    device: torch.device


def load_ensemble(store: Store, run_id: str, *, device: str = "cpu") -> Ensemble:
    """The run's fold models in eval mode on `device`; a CxrError says why a run cannot predict."""
    run = store.run_record(run_id)
    if run.status != "finished":
        raise CxrError(f"run {run_id} is {run.status}; predictions need a finished run")
    files = store.fold_model_files(run)
    if not files:
        raise CxrError(f"run {run_id} kept no fold models; start a run with --set save_models=true to predict with it")
    dev = torch.device(device)
    models = []
    for file in files:
        model, _ = build_model(run.config.backbone, len(run.classes), "none")
        try:
            model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as exc:  # damaged or foreign file in the run folder
            raise CxrError(f"cannot load {file.name} of run {run_id}: {type(exc).__name__}") from None
        models.append(model.to(dev).eval())
    return Ensemble(run, tuple(models), dev)


def predict_with(ensemble: Ensemble, data: bytes, *, threshold: float = 0.5) -> Prediction:
    """Classify one encoded image (PNG, JPEG, DICOM, ...) with a loaded ensemble."""
    run = ensemble.run
    try:
        gray = decode_bytes(data, run.config.image_size)
    except DecodeError as exc:
        raise CxrError(f"cannot use this file: {exc}; upload a PNG, JPEG or DICOM radiograph") from None
    x = torch.from_numpy(np.array(gray))[None]  # a writable copy (decoders may return read-only views)
    positive = run.positive_index
    probs, cams = [], []
    for model in ensemble.models:  # one forward pass per model gives its probability and its map
        cam, prob = cams_and_probs(model, run.config.backbone, x, [positive], ensemble.device, method=run.config.gradcam_method,
                                   flip=run.config.gradcam_flip)
        probs.append(float(prob[0, positive]))
        cams.append(cam[0])
    mean = float(np.mean(probs))
    return Prediction(mean, probs, threshold, run.positive_class if mean >= threshold else run.negative_class, run.positive_class,
                      gray, np.mean(cams, axis=0), run.negative_class)


def predict_image(store: Store, run_id: str, data: bytes, *, threshold: float = 0.5, device: str = "cpu") -> Prediction:
    """Classify one encoded image with the run's fold-model ensemble (loaded for this call; the CLI's one-shot path)."""
    return predict_with(load_ensemble(store, run_id, device=device), data, threshold=threshold)
