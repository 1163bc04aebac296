"""External validation: a finished run's fold-model ensemble on another data set with the same classes.

Trained on one hospital's (or release's) images, tested on another's: the question a clinical reviewer asks
first. The run's own preprocessing (image size, its data settings) reads the new data set; every image gets
the mean positive-class probability of the fold models (none of them saw it); the evaluation is stored
linked to the run, with the data set's fingerprint, cohort flow and subgroups, and a Grad-CAM sample
(`runs/<run_id>/external/<evaluation_id>.npz`). The statistics are computed when read
(core/results/external.py), from the stored predictions, as for a run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core import CxrError
from core.config import apply_overrides
from core.data.prepare import cache_dir_for, prepare_data
from core.ids import new_run_id
from core.results.store import Store, now
from core.training.explain import explain_fold
from core.training.predict import load_ensemble
from core.training.train import predict_probs

# Settings of the run's own data that cannot describe another data set: reset for the new one.
_RESET = ["source=auto", "fold_column=", "subgroup_columns="]


def validate_run(store: Store, run_id: str, data: str, *, name: str = "", sets: list[str] = (), gradcam_sample: int = 24,
                 progress: Callable[[dict], None] | None = None) -> str:
    """Evaluate run `run_id`'s fold models on `data`; returns the evaluation id. `sets`: data settings for the new
    data set (path_column, label_column, positive_labels, subgroup_columns, ...), as `--set` gives them."""
    emit = progress or (lambda event: None)
    ensemble = load_ensemble(store, run_id)
    run = ensemble.run
    cfg = apply_overrides(run.config, [f"data={data}", *_RESET, *sets])
    emit({"event": "stage", "text": "reading the external data set"})
    prepared = prepare_data(cfg, cache_dir=cache_dir_for(store.runs_dir),
                            progress=lambda d, t: emit({"event": "loading", "done": d, "total": t}))
    if sorted(prepared.classes) != sorted(run.classes):
        raise CxrError(f"the external data set's classes ({', '.join(prepared.classes)}) are not run {run_id}'s "
                       f"({', '.join(run.classes)}); map them with --set positive_labels=... so both have the same classes")
    # the run's class indices, whatever order the new data set listed its classes in
    to_run = np.array([list(run.classes).index(c) for c in prepared.classes])
    labels = to_run[prepared.labels]
    positive = run.positive_index
    started = time.perf_counter()
    x = torch.from_numpy(prepared.pixels)
    probs = np.mean([predict_probs(model, x, ensemble.device) for model in ensemble.models], axis=0)
    evaluation_id = f"ext-{new_run_id()}"
    store.save_dataset(prepared.dataset_id, source=prepared.manifest.source, root=prepared.manifest.root,
                       synthetic=prepared.manifest.synthetic, table=prepared.manifest.table, classes=prepared.classes,
                       flow=prepared.manifest.flow)
    artifact = ""
    if gradcam_sample:
        # a sample of heat maps from the first fold model, TP/FP/FN/TN kept (the gallery's own capping)
        arrays, _ = explain_fold(ensemble.models[0], run.config.backbone, x, image_ids=prepared.image_ids, labels=labels, probs=probs,
                                 positive=positive, mask_paths=None, cap=gradcam_sample, store_size=run.config.gradcam_size,
                                 device=ensemble.device, method=run.config.gradcam_method, flip=run.config.gradcam_flip)
        if arrays:
            path = store.run_dir(run_id) / "external" / f"{evaluation_id}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, **arrays)
            artifact = str(path.relative_to(store.runs_dir))
    store.save_evaluation(evaluation_id, run_id=run_id, name=name or Path(data).name, dataset_id=prepared.dataset_id,
                          synthetic=prepared.manifest.synthetic, created_at=now(), seconds=time.perf_counter() - started,
                          artifact=artifact, image_ids=prepared.image_ids, label_index=labels, prob_positive=probs[:, positive],
                          classes=json.dumps(list(run.classes)))
    emit({"event": "note", "text": f"external evaluation {evaluation_id}: {len(labels)} images of {data}"})
    return evaluation_id
