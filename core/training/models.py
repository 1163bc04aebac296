"""Backbones by name, their weights (ImageNet / local file / none), the new head and its learning-rate factor.

Weights never come from a pickle: torchvision's cache and local files are read with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from core import CxrError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """How to build one architecture and where its classifier head and heat-map layers sit."""

    head: str  # dotted attribute path of the final Linear layer
    cam_layer: str  # last convolutional block: Grad-CAM's usual target (the study's)
    fine_layer: str  # the last block before the final downsampling: LayerCAM's target, twice as fine
    cam_stride: int = 32  # input pixels per cell of cam_layer's map
    fine_stride: int = 16  # input pixels per cell of fine_layer's map


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("fc", "layer4.-1", "layer3.-1"),
    "resnet34": Backbone("fc", "layer4.-1", "layer3.-1"),
    "resnet50": Backbone("fc", "layer4.-1", "layer3.-1"),
    "resnet101": Backbone("fc", "layer4.-1", "layer3.-1"),
    "densenet121": Backbone("classifier", "features.denseblock4", "features.denseblock3"),
    "efficientnet_b0": Backbone("classifier.1", "features.-1", "features.5"),
    "mobilenet_v3_small": Backbone("classifier.3", "features.-1", "features.8"),
}


@dataclass
class WeightsReport:
    """What was actually loaded: stored with the run so nobody mistakes scratch training for transfer learning."""

    requested: str
    used: str  # "imagenet:<enum>", "file:<path>", "none", or "none (ImageNet weights not cached)"
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    message: str = ""


def get_module(model: nn.Module, dotted: str) -> nn.Module:
    """`layer4.-1` -> model.layer4[-1]."""
    module = model
    for part in dotted.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_path, _, last = dotted.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    if last.lstrip("-").isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def imagenet_cache_file(name: str) -> Path:
    """Where torch hub keeps (or would keep) the ImageNet weights of `name`."""
    url = tvm.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def imagenet_available(name: str) -> bool:
    return imagenet_cache_file(name).is_file()


def download_imagenet(name: str, *, url: str | None = None, progress: bool = True) -> Path:
    """Fetch `name`'s ImageNet weights into torch hub's cache, where `weights=imagenet|auto` (and the paper preset) find them.

    The URL is torchvision's own (its weights API, `get_model_weights(name).DEFAULT.url`) unless `url` names a mirror
    that serves torchvision's files under their own names. As torch hub does, the file name carries the first
    digits of the file's SHA-256 (`resnet18-f37072fd.pth`): a download that does not match is deleted, never kept.
    Returns the cached file; one already there is not fetched again.
    """
    if name not in BACKBONES:
        raise CxrError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    source = url or tvm.get_model_weights(name).DEFAULT.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(source.split("?")[0]).name
    if target.is_file():
        return target
    match = torch.hub.HASH_REGEX.search(target.name)
    if match is None:
        raise CxrError(f"{target.name} does not carry a checksum in its name (like resnet18-f37072fd.pth); use torchvision's file names")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch hub announces downloads on stdout, which the CLI keeps for results
            torch.hub.download_url_to_file(source, str(target), hash_prefix=match.group(1), progress=progress)
    except RuntimeError as exc:  # torch hub's checksum check: the partial file is already gone
        target.unlink(missing_ok=True)
        raise CxrError(f"the downloaded {target.name} does not match its checksum ({exc}); nothing was kept. "
                       "Try again, or copy the file by hand") from None
    except (OSError, ValueError) as exc:  # no network (URLError is an OSError), refused, a full disk, a bad URL
        target.unlink(missing_ok=True)
        raise CxrError(f"cannot download {source}: {exc}. Without internet, copy {target.name} from a machine that has it to "
                       f"{target}, or pass a local file with --set weights=/path/to/{target.name}") from None
    return target


def build_model(name: str, num_classes: int, weights: str) -> tuple[nn.Module, WeightsReport]:
    """A backbone with its final layer replaced for `num_classes`, and a report of its weights.

    Args:
        name: one of BACKBONES.
        num_classes: classes of the data set (2 for effusion vs normal).
        weights: "imagenet", "auto" (ImageNet when cached, else none), "none" or a state-dict path.

    Raises:
        CxrError: unknown backbone, ImageNet weights unavailable, or an unusable weights file.
    """
    if name not in BACKBONES:
        raise CxrError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    model = tvm.get_model(name, weights=None)
    if weights == "imagenet" or (weights == "auto" and imagenet_available(name)):
        report = _load_imagenet(model, name, requested=weights)
    elif weights == "auto":
        report = WeightsReport(
            "auto",
            "none (ImageNet weights not cached)",
            message=(
                f"ImageNet weights for {name} are not cached at {imagenet_cache_file(name)}; "
                "training from scratch (results will be weaker than transfer learning)"
            ),
        )
    elif weights == "none":
        report = WeightsReport("none", "none", message="training from scratch (weights=none)")
    else:
        report = _load_file(model, Path(weights), spec)
    old_head = get_module(model, spec.head)
    _set_module(model, spec.head, nn.Linear(old_head.in_features, num_classes))
    return model, report


def _load_imagenet(model: nn.Module, name: str, *, requested: str) -> WeightsReport:
    enum = tvm.get_model_weights(name).DEFAULT
    target = imagenet_cache_file(name)
    try:
        # Loads from torch hub's cache when present, else tries to download into it. torch hub
        # announces downloads on stdout, which the CLI keeps for results: send that to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            state = torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # no network (URLError), a damaged file (RuntimeError), a full disk (OSError)
        raise CxrError(
            f"ImageNet weights for {name} are not available offline ({type(exc).__name__}: {exc}). "
            f"Copy {target.name} (from {enum.url}) to {target}, or pass a local file with "
            f"--set weights=/path/to/{target.name}, or train from scratch with --set weights=none"
        ) from None
    model.load_state_dict(state)
    return WeightsReport(requested, f"imagenet:{enum}", message=f"ImageNet weights {enum} from {target}")


def _load_file(model: nn.Module, path: Path, spec: Backbone) -> WeightsReport:
    """A local state dict; the old head is dropped (it is replaced anyway) and every other mismatch is reported."""
    if not path.is_file():
        raise CxrError(f"weights file {path} not found; pass imagenet, auto, none or an existing .pth/.pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickled code (refused by weights_only), truncated or foreign files
        raise CxrError(f"cannot read weights file {path}: not a plain state dict ({_load_failure(exc)}); save one with "
                       "torch.save(model.state_dict(), path)") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CxrError(f"weights file {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head_prefix = spec.head + "."
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    own = model.state_dict()
    shape_errors = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_errors:
        raise CxrError(
            f"weights file {path} does not fit this backbone: {len(shape_errors)} shape mismatch(es), e.g. {shape_errors[0]}; "
            "is it for another architecture?"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    unexpected = list(result.unexpected_keys)
    matched = len(set(state) & set(own))
    if matched == 0:
        raise CxrError(f"no key of weights file {path} matches this backbone (e.g. {next(iter(state), '?')}); wrong architecture?")
    message = f"loaded {matched} tensors from {path}"
    if missing or unexpected:
        message += f"; {len(missing)} missing key(s) (kept at random init, e.g. {missing[:3]}), {len(unexpected)} unexpected key(s) ignored (e.g. {unexpected[:3]})"
        log.warning(message)
    return WeightsReport(str(path), f"file:{path}", missing, unexpected, message)


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, in a few words, without torch's hint to retry with weights_only=False (unsafe)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = next((line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()), "")
        return (f"the safe loader refused it: {detail[:120]}; pickled Python objects other than tensors are never loaded, "
                "because loading them could run code")
    return f"{type(exc).__name__}: {text.split('. ')[0][:160]}"


def param_groups(model: nn.Module, backbone: str, *, lr: float, head_lr_factor: float, freeze_backbone: bool) -> list[dict]:
    """Optimizer groups: the backbone at `lr`, the new head (weight and bias) at `lr * head_lr_factor`.

    Mirrors MATLAB's WeightLearnRateFactor = BiasLearnRateFactor = 10 on the new layer.
    """
    return named_param_groups(dict(model.named_parameters()), backbone, lr=lr, head_lr_factor=head_lr_factor,
                              freeze_backbone=freeze_backbone)


def named_param_groups(named: dict[str, torch.Tensor], backbone: str, *, lr: float, head_lr_factor: float,
                       freeze_backbone: bool) -> list[dict]:
    """`param_groups` over parameters by name, so that stacked fold parameters (core/training/foldstack.py) group the same way.

    A frozen backbone's tensors stop requiring gradients and are left out of the optimiser.
    """
    prefix = BACKBONES[backbone].head + "."
    head = [p for name, p in named.items() if name.startswith(prefix)]
    body = [p for name, p in named.items() if not name.startswith(prefix)]
    groups = [{"params": head, "lr": lr * head_lr_factor, "name": "head"}]
    if freeze_backbone:
        for p in body:
            p.requires_grad_(False)
    else:
        groups.insert(0, {"params": body, "lr": lr, "name": "backbone"})
    return groups


def make_optimizer(kind: str, groups: list[dict], *, momentum: float, weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    """`capturable`: the step will be captured in a CUDA graph, so Adam keeps its step count on the GPU (SGD needs nothing)."""
    factories: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgdm": lambda: torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay),
        "adam": lambda: torch.optim.Adam(groups, lr=groups[0]["lr"], weight_decay=weight_decay, capturable=capturable),
    }
    if kind not in factories:
        raise CxrError(f"unknown optimizer {kind!r}; choose one of: {', '.join(factories)}")
    return factories[kind]()
