"""RunConfig: the one typed, validated object that travels from the CLI or UI to the engine and into the store.

Presets are plain dicts of overrides on top of the defaults, so `paper` reads as a list of
the study's values (../shared/PAPER.md) and any field can still be overridden with
`--set field=value`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from core import CxrError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "densenet121", "efficientnet_b0", "mobilenet_v3_small")
OPTIMIZERS = ("sgdm", "adam")
SOURCES = ("auto", "demo", "folders", "csv")
DEVICES = ("auto", "cpu", "cuda")
EXECUTORS = ("local", "ray")
PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "on", "off")
# Heat maps: the study's Grad-CAM on the last block, or LayerCAM on the block before it (finer: measured to point at
# a basal effusion far more often in the quick demo; docs/benchmarks.md, "Heat maps in the quick demo").
CAM_METHODS = ("gradcam", "layercam")
# Input pixels per heat-map cell, the same for every backbone (tests/test_explain.py checks each model's layers).
CAM_CELL_PX = {"gradcam": 32, "layercam": 16}
# weights: a name, or a path to a local state-dict file.
NAMED_WEIGHTS = ("imagenet", "auto", "none")
# Trainable parameters of each backbone with a two-class head, in millions (counted from torchvision's models,
# tests/test_config.py checks them): what a run's saved fold models cost on disk, shown before it starts.
BACKBONE_MILLION_PARAMS = {"resnet18": 11.18, "resnet34": 21.29, "resnet50": 23.51, "resnet101": 42.50, "densenet121": 6.96,
                           "efficientnet_b0": 4.01, "mobilenet_v3_small": 1.52}


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its help text, so the CLI and the Train page show the same words."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class RunConfig:
    """Every knob of one cross-validated run. Defaults are the study's values unless noted."""

    # --- data -----------------------------------------------------------------------------
    data: str = _f("", "Data set: a demo folder, a folder with one sub-folder per class, or a CSV manifest.")
    source: str = _f("auto", "How to read `data`: auto, demo, folders or csv.", choices=SOURCES)
    path_column: str = _f("path", "CSV manifests: column holding the image path (relative to the CSV).")
    label_column: str = _f("label", "CSV manifests: column holding the class label.")
    group_column: str = _f("", "CSV manifests: column holding the patient id ('' = none; demo data uses patient_id).")
    positive_labels: str = _f(
        "", "Label value(s), comma-separated, that count as the positive class; '' keeps the labels as they are."
    )
    fold_column: str = _f("", "CSV manifests: column holding your own fold numbers (1..k); '' = the tool assigns folds. "
                              "Audited for patient leakage before training.")
    subgroup_columns: str = _f("", "CSV manifests: more columns to report results by (comma-separated, e.g. site,scanner); sex, age "
                                    "and age_band are used whenever the manifest has them, ages in bands.")
    image_size: int = _f(224, "Images are resized to this many pixels square (the study: 224 for ResNet-50).", min=16, max=1024)

    # --- model ----------------------------------------------------------------------------
    backbone: str = _f("resnet50", "ImageNet CNN to fine-tune.", choices=BACKBONES)
    weights: str = _f(
        "imagenet",
        "imagenet (torchvision weights, cached by torch hub), auto (ImageNet if cached, else from scratch), "
        "none (from scratch), or a path to a local state-dict file.",
    )
    head_lr_factor: float = _f(10.0, "The new final layer learns this many times faster (MATLAB WeightLearnRateFactor).", min=0.0)
    freeze_backbone: bool = _f(False, "Train only the new final layer.")

    # --- training -------------------------------------------------------------------------
    optimizer: str = _f("sgdm", "sgdm (SGD with momentum, MATLAB's default) or adam.", choices=OPTIMIZERS)
    learning_rate: float = _f(1e-4, "Initial (and constant) learning rate of the backbone.", min_exclusive=0.0)
    momentum: float = _f(0.9, "SGD momentum (MATLAB default 0.9).", min=0.0, max=0.999)
    weight_decay: float = _f(1e-4, "L2 regularisation (MATLAB default 1e-4).", min=0.0)
    batch_size: int = _f(25, "Mini-batch size.", min=1)
    max_iterations: int = _f(250, "Iteration budget per fold; 0 = no limit (then max_epochs ends training).", min=0)
    max_epochs: int = _f(64, "Epoch limit per fold; the iteration budget usually ends training first.", min=1)
    augment: bool = _f(True, "Random scaling, flips, crop and translation, each with probability aug_prob.")
    aug_prob: float = _f(0.5, "Probability of each augmentation, drawn per image.", min=0.0, max=1.0)
    aug_scale: float = _f(0.1, "Random scaling by a factor in [1-s, 1+s].", min=0.0, max=0.5)
    aug_crop: float = _f(0.8, "Random crop keeps at least this fraction of the side, then resizes back.", min=0.3, max=1.0)
    aug_translate: float = _f(0.1, "Random translation by up to this fraction of the side.", min=0.0, max=0.5)
    eval_every: int = _f(50, "Evaluate the held-out fold every N iterations for the training curve (never used to select or stop).", min=1)

    # --- protocol -------------------------------------------------------------------------
    folds: int = _f(10, "Number of cross-validation folds.", min=2, max=50)
    exclude_label_errors: bool = _f(False, "Leave out the images that a reviewer tagged as a label error (Review page) in any run on "
                                    "the same data; each is counted in the data flow with the reason.")
    repeats: int = _f(1, "Repeat the k-fold cross-validation this many times, each on a new split (seeded, patients kept together); "
                      "the results are the first repeat's, with the spread over repeats beside them.", min=1, max=20)
    group_by_patient: bool = _f(True, "Keep every patient's images in one fold (whenever patient ids are known).")
    seed: int = _f(0, "Seed for splits, initialisation, shuffling and augmentation.", min=0)
    positive_class: str = _f("", "Class reported as positive (sensitivity); '' = the class that is not named like Normal / No Finding, else the last in sorted order.")

    # --- explanation ----------------------------------------------------------------------
    gradcam: bool = _f(True, "Compute Grad-CAM heat maps of each fold's held-out images after training.")
    gradcam_max: int = _f(100, "At most this many held-out images per fold get heat maps (0 = all); the cap keeps TP, FP, FN and TN.", min=0)
    gradcam_size: int = _f(64, "Stored heat-map side in pixels (the gallery upsamples).", min=8, max=512)
    gradcam_method: str = _f("gradcam", "gradcam: Grad-CAM on the last convolutional block, as the study (cells of 32 px); layercam: LayerCAM "
                             "on the block before it (cells of 16 px, twice as fine).", choices=CAM_METHODS)
    gradcam_flip: bool = _f(False, "Average each heat map with the map of the mirrored image, mirrored back (twice the heat-map time; "
                            "steadier maps).")

    # --- execution ------------------------------------------------------------------------
    device: str = _f("auto", "auto (CUDA when present), cpu or cuda.", choices=DEVICES)
    num_threads: int = _f(0, "CPU threads for torch; 0 = the physical cores.", min=0)
    precision: str = _f("auto", "fp32, bf16 (autocast; weights and optimiser stay fp32) or auto: bf16 on a CUDA GPU that "
                                "supports it and on a CPU with bf16 instructions (AVX512-BF16, AMX), else fp32.", choices=PRECISIONS)
    channels_last: str = _f("auto", "NHWC memory format: on, off, or auto (on with CUDA, and on a CPU training in bf16, where it measured up "
                                    "to 1.6x faster; off on a CPU in fp32, where it gave no consistent gain).",
                            choices=MEMORY_FORMATS)
    torch_compile: bool = _f(False, "Compile the model with torch.compile (slower first iterations; falls back to eager if compiling fails).")
    cuda_graphs: bool = _f(True, "On a CUDA GPU, capture each training step once as a CUDA graph and replay it (the whole step in one "
                                 "launch; ignored on a CPU and with torch_compile). Falls back to eager if capture fails.")
    parallel_folds: int = _f(0, "Folds trained at once on one device, their models stacked (same results as one after "
                                "another, to rounding); 0 = auto: on a CUDA GPU as many as fill it at this batch and image size, "
                                "on the CPU 1 (stacked folds measured slower there).", min=0, max=50)
    save_models: bool = _f(False, "Save each fold's trained weights under runs/<run_id>/ (needed to predict later).")
    eval_batch_size: int = _f(64, "Mini-batch size for held-out evaluation.", min=1)

    # --- scale-out (core/training/ray_executor.py) ------------------------------------------
    executor: str = _f("local", "local (this process) or ray: every fold a Ray task, spread over the GPUs and machines of a "
                                "Ray cluster; a sweep puts all its runs' folds in one pool.", choices=EXECUTORS)
    ray_address: str = _f("", "executor=ray: '' starts a private Ray instance on this machine; auto or HOST:PORT joins a running "
                              "cluster (ray start --head).")
    gpus_per_fold: float = _f(-1.0, "executor=ray: GPUs each fold task reserves; fractions share a GPU (0.5 = two folds per GPU); "
                                    "-1 = 1 when the cluster has GPUs, else 0.", min=-1.0)
    cpus_per_fold: float = _f(1.0, "executor=ray: CPUs each fold task reserves.", min=0.0)

    def __post_init__(self) -> None:
        errors = [e for f in fields(self) if (e := _check(f, getattr(self, f.name)))]
        if self.weights not in NAMED_WEIGHTS and not self.weights.strip():
            errors.append("weights must be imagenet, auto, none or a path to a weights file")
        if self.repeats > 1 and self.fold_column:
            errors.append(f"repeats={self.repeats} needs new splits per repeat, but fold_column={self.fold_column!r} fixes one split; "
                          "use repeats=1 with your own folds, or drop fold_column")
        if errors:
            raise CxrError("invalid configuration: " + "; ".join(errors))

    # -- conversions -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CxrError(_unknown_message(unknown[0]))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# Settings that change how or where a run computes, or what it keeps, but not what it finds: they never count as a
# difference between runs (Compare's highlighted columns, Table 3's "varies", automatic run names).
RESULT_NEUTRAL = frozenset({"device", "num_threads", "torch_compile", "cuda_graphs", "parallel_folds", "channels_last", "save_models",
                            "eval_batch_size", "eval_every", "executor", "ray_address", "gpus_per_fold", "cpus_per_fold"})
_DATA_FIELDS = frozenset({"data", "source", "path_column", "label_column", "group_column", "positive_labels", "fold_column",
                          "subgroup_columns"})
_SHORT = {"learning_rate": "lr", "max_iterations": "iters", "max_epochs": "epochs", "batch_size": "batch", "weight_decay": "wd",
          "head_lr_factor": "head lr x", "image_size": "px", "optimizer": "", "backbone": "", "precision": "",
          "gradcam_method": "", "gradcam_flip": "mirrored maps"}


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def auto_name(cfg: "RunConfig", preset_name: str = "", among: Iterable[str] | None = None) -> str:
    """A readable name for a run nobody named: its preset and the settings that differ from it, e.g. `quick · lr 1e-4 · seed 1`.

    Data settings and those in RESULT_NEUTRAL are left out (the data set is shown apart; they do not change results).
    `among`: only these settings are named. A sweep passes the swept ones: its runs share everything else, and a name
    that repeats a dozen shared settings hides the one that tells them apart.
    """
    only = None if among is None else set(among)
    base = preset(preset_name) if preset_name in PRESETS else RunConfig()
    parts = [preset_name or "custom"]
    for f in fields(RunConfig):
        value = getattr(cfg, f.name)
        if only is not None:
            if f.name not in only:  # a swept setting is named even where it equals the preset's value
                continue
        elif f.name in RESULT_NEUTRAL or f.name in _DATA_FIELDS or value == getattr(base, f.name):
            continue
        short = _SHORT.get(f.name, f.name)
        if f.name == "image_size":
            parts.append(f"{value} px")
        elif short == "":
            parts.append(_value_text(value))
        else:
            parts.append(f"{short} {_value_text(value)}")
    return " · ".join(parts)


def ignored_by_optimizer(optimizer: str) -> frozenset[str]:
    """Settings the chosen optimiser does not read (the Train page hides them): Adam has no momentum setting of ours."""
    return frozenset() if optimizer == "sgdm" else frozenset({"momentum"})


# Presets are overrides on top of the defaults (which already are the study's values).
PRESETS: dict[str, dict[str, Any]] = {
    # ../shared/PAPER.md: ResNet-50, ImageNet, 224 px, SGDM 0.9, L2 1e-4, lr 1e-4 constant,
    # head factor 10, mini-batch 25, 250 iterations, 10 folds, augmentation p=0.5.
    "paper": {},
    # Sized for a 2-core laptop CPU without ImageNet weights: ResNet-18 at 64 px trains at about
    # 60-75 images/s there (measured), so 5 folds x 50 iterations x 32 images fit in about 2.5 min.
    # From scratch needs a larger learning rate than fine-tuning (Adam is forgiving there), and in
    # so few iterations the study's augmentation costs more than it gives (vertical flips move a
    # basal effusion to the top of the image): measured held-out AUC 0.87 without vs 0.76 with.
    "quick": {
        "backbone": "resnet18",
        "weights": "auto",
        "image_size": 64,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "head_lr_factor": 1.0,
        "batch_size": 32,
        "max_iterations": 50,
        "augment": False,
        "folds": 5,
        "eval_every": 10,
        # Grad-CAM's 2 x 2 map at 64 px pointed at the effusion in 64 % of positives (chance 41 %); LayerCAM's 4 x 4
        # map averaged with its mirror image in 90 % (chance 18 %), for about 10 s more (docs/benchmarks.md).
        "gradcam_method": "layercam",
        "gradcam_flip": True,
    },
}


def heat_map_text(cfg: RunConfig) -> str:
    """How a run's heat maps were made, for captions: the method, its layer and the map's cells at the run's input size."""
    cells = max(1, cfg.image_size // CAM_CELL_PX[cfg.gradcam_method])
    method = ("LayerCAM on the block before the last" if cfg.gradcam_method == "layercam" else "Grad-CAM on the last block")
    return f"{method} of {cfg.backbone}, {cells} x {cells} cells" + (", averaged with the mirrored image's map" if cfg.gradcam_flip else "")


def preset(name: str) -> RunConfig:
    """The named preset as a RunConfig; unknown names raise with the valid list."""
    if name not in PRESETS:
        raise CxrError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return RunConfig(**PRESETS[name])


# How the Train page groups the settings (every field exactly once; tests check it).
SECTIONS: dict[str, list[str]] = {
    "Data": ["data", "source", "path_column", "label_column", "group_column", "positive_labels", "fold_column", "subgroup_columns", "image_size"],
    "Model and weights": ["backbone", "weights", "head_lr_factor", "freeze_backbone"],
    "Optimisation": ["optimizer", "learning_rate", "momentum", "weight_decay", "batch_size", "max_iterations", "max_epochs", "eval_every"],
    "Augmentation": ["augment", "aug_prob", "aug_scale", "aug_crop", "aug_translate"],
    "Cross-validation": ["folds", "repeats", "group_by_patient", "seed", "positive_class", "exclude_label_errors"],
    "Grad-CAM": ["gradcam", "gradcam_method", "gradcam_flip", "gradcam_max", "gradcam_size"],
    "Execution": ["device", "num_threads", "precision", "channels_last", "torch_compile", "cuda_graphs", "parallel_folds", "save_models", "eval_batch_size"],
    "Scale-out (Ray)": ["executor", "ray_address", "gpus_per_fold", "cpus_per_fold"],
}


def apply_overrides(cfg: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `field=value` strings (from `--set`), parsing each value by the field's type."""
    types = {f.name: f.type for f in fields(RunConfig)}
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CxrError(f"--set expects field=value, got {item!r} (e.g. --set max_iterations=250)")
        if name not in types:
            raise CxrError(_unknown_message(name))
        changes[name] = _parse(name, types[name], raw.strip())
    return cfg.replace(**changes)


def budget(cfg: RunConfig, n_train: int) -> tuple[int, int]:
    """(iterations to run, iterations per epoch). As MATLAB, an epoch drops the last partial batch."""
    per_epoch = max(1, n_train // cfg.batch_size)
    total = cfg.max_epochs * per_epoch
    if cfg.max_iterations:
        total = min(total, cfg.max_iterations)
    return total, per_epoch


def field_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(RunConfig)}


def _parse(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        kind = {"bool": "true or false", "int": "a whole number", "float": "a number"}[type_name]
        raise CxrError(f"{name} must be {kind}, got {raw!r}") from None
    return raw


def _check(f: dataclasses.Field, value: Any) -> str | None:
    meta = f.metadata
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[f.type]
    if not isinstance(value, expected) or (f.type != "bool" and isinstance(value, bool)):
        return f"{f.name} must be of type {f.type}, got {value!r}"
    if "choices" in meta and value not in meta["choices"]:
        return f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}"
    if "min" in meta and value < meta["min"]:
        return f"{f.name} must be at least {meta['min']}, got {value!r}"
    if "min_exclusive" in meta and value <= meta["min_exclusive"]:
        return f"{f.name} must be greater than {meta['min_exclusive']}, got {value!r}"
    if "max" in meta and value > meta["max"]:
        return f"{f.name} must be at most {meta['max']}, got {value!r}"
    return None


def _unknown_message(name: str) -> str:
    names = [f.name for f in fields(RunConfig)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {name!r}.{hint} Valid settings: {', '.join(names)}"
