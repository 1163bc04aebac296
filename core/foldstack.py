"""Several folds' models trained as one: their parameters stacked along a new first dimension and run under `torch.func.vmap`.

Why: at the study's batch of 25, one ResNet-50 training step leaves a large GPU mostly idle,
waiting for the host to launch a thousand small kernels. Folds of a run are independent and
take the same number of steps, so K of them can share every launch: each convolution becomes
one grouped convolution over K weight sets, each BatchNorm one call over K sets of statistics.

What stays exactly as if each fold trained alone:
- every fold sees only its own images, batch statistics and random streams (the caller draws
  them per fold);
- each fold's loss is the mean over its own batch, and the summed loss gives each fold's
  parameters exactly its own gradient (no parameter is shared);
- SGD with momentum, weight decay and Adam act element by element, so one optimiser over the
  stacked tensors is K independent optimisers with the same settings;
- BatchNorm running statistics are stacked buffers updated per fold.
What differs is the order of floating-point sums inside the grouped kernels: results agree with
sequential folds to rounding, which training can amplify over many steps (tests/test_foldstack.py).

`SingleModel` is the same interface for one fold, without vmap: on a CPU, grouped convolutions
measured slower than the folds one after another (2 folds: 0.52-0.71x the images/s), so the CPU
path keeps plain modules.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from core.models import BACKBONES, get_module, named_param_groups


def set_train_mode(model: nn.Module, backbone: str, freeze_backbone: bool) -> None:
    """Train mode; a frozen backbone keeps its BatchNorm statistics fixed too (only the head trains)."""
    model.train()
    if freeze_backbone:
        model.eval()
        get_module(model, BACKBONES[backbone].head).train()


class SingleModel:
    """One fold's model behind the stacked interface: inputs (1, B, 3, H, W) -> logits (1, B, C)."""

    def __init__(self, model: nn.Module, backbone: str) -> None:
        self.models, self.backbone = [model], backbone
        self.forward: Callable[[torch.Tensor], torch.Tensor] = lambda x: model(x[0]).unsqueeze(0)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.models[0].named_parameters())

    def train_mode(self, freeze_backbone: bool) -> None:
        set_train_mode(self.models[0], self.backbone, freeze_backbone)

    def export(self) -> list[nn.Module]:
        """The trained per-fold modules (here the module itself, trained in place)."""
        return self.models


class StackedModels:
    """K models of one architecture as stacked tensors: inputs (K, B, 3, H, W) -> logits (K, B, C).

    Args:
        models: K modules already on their device (and memory format); they are read once here and
            written back by `export()`. Training updates only the stacked tensors.
        backbone: name in BACKBONES (for the head's learning-rate group and the frozen-backbone mode).
    """

    def __init__(self, models: list[nn.Module], backbone: str) -> None:
        self.models, self.backbone = models, backbone
        with torch.no_grad():
            params, buffers = stack_module_state(models)  # new leaf tensors (K, ...), parameters requiring grad
        self.params, self.buffers = params, buffers
        # A weightless copy for the structure and the train/eval flags; functional_call swaps the tensors in.
        self.base = copy.deepcopy(models[0]).to("meta")

        def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        batched = vmap(one, in_dims=(0, 0, 0))
        self.forward = lambda x: batched(self.params, self.buffers, x)

    def named_parameters(self) -> dict[str, torch.Tensor]:
        return self.params

    def train_mode(self, freeze_backbone: bool) -> None:
        set_train_mode(self.base, self.backbone, freeze_backbone)

    @torch.no_grad()
    def export(self) -> list[nn.Module]:
        """Copy fold k's slice of every stacked tensor into `models[k]` and return the modules (for evaluation, Grad-CAM, saving)."""
        for k, model in enumerate(self.models):
            state = {name: t[k] for name, t in {**self.params, **self.buffers}.items()}
            model.load_state_dict(state)
        return self.models


def stack(models: list[nn.Module], backbone: str) -> SingleModel | StackedModels:
    """One fold: the module itself; several: their stacked tensors under vmap."""
    return SingleModel(models[0], backbone) if len(models) == 1 else StackedModels(models, backbone)


def stacked_param_groups(stacked: SingleModel | StackedModels, *, lr: float, head_lr_factor: float,
                         freeze_backbone: bool) -> list[dict]:
    return named_param_groups(stacked.named_parameters(), stacked.backbone, lr=lr, head_lr_factor=head_lr_factor,
                              freeze_backbone=freeze_backbone)
