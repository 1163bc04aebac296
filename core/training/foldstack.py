"""Several folds' models trained as one: on a GPU as plain modules on a stream each (`FoldModules`), on a CPU with
their parameters stacked along a new first dimension and run under `torch.func.vmap` (`StackedModels`).

Why: at the study's batch of 25, one ResNet-50 training step leaves a large GPU mostly idle,
waiting for the host to launch a thousand small kernels. Folds of a run are independent and
take the same number of steps, so K of them can share every launch. vmap was written for that
(each convolution becomes one grouped convolution over K weight sets, each BatchNorm one call
over K sets of statistics), but on the H200 (2026-12-04) ten stacked folds ran no faster than one
and two of its gaps failed on CUDA; there the launches are now saved by capturing the whole step
as a CUDA graph (core/training/cudagraph.py), with the folds as `FoldModules` branches of one graph. vmap
remains for a CPU asked for `parallel_folds` > 1.

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

`SingleModel` is the same interface for one fold, without vmap: on a CPU, stacked folds measured
slower than the folds one after another (2 folds: 0.61-0.99x the images/s in bf16; 0.52-0.71x before
the first fix below), so the CPU path keeps plain modules unless `parallel_folds` asks otherwise.

Gaps of vmap that the stacked path works around, all found on the CPU:
- torch's CPU autocast casts `conv2d` and `linear`, which vmap decomposes before autocast sees them,
  so stacked folds of a "bf16" run computed in fp32. `VmapGapsMode` applies autocast's rule above vmap.
  (CUDA autocast was expected to cast the `convolution` vmap hands on; on the H200 it did not, one
  reason the GPU no longer uses vmap.)
- vmap's BatchNorm rule calls the kernel with a weight in the input's dtype (bf16) beside the fp32
  running statistics, which the CPU kernel refuses ("expected scalar type BFloat16 but found
  Float"). On a CPU, stacked BatchNorm therefore gets its input in the statistics' dtype (fp32);
  the next convolution casts back to bf16.
- vmap refuses random operations unless told how to draw them: each fold draws its own dropout and
  stochastic-depth masks (`randomness="different"`), and torchvision's StochasticDepth, which draws
  in place into an unbatched tensor, is swapped for `StochasticDepthPerFold` in the stacked structure.
- global average pooling of NHWC tensors has no batching rule (`as_strided_`), so vmap looped over
  the folds with a warning; pooling to 1 x 1 is computed as a mean over height and width instead.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from core.training.models import BACKBONES, get_module, named_param_groups


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


class VmapGapsMode(TorchFunctionMode):
    """Operations as they act outside vmap, where vmap alone gets them wrong or slow (see the module's docstring).

    - While CPU autocast is on, convolutions and linear layers get their floating inputs in the
      autocast dtype, as autocast gives them outside vmap. The casts are differentiable, so gradients
      reach the fp32 parameters as under plain autocast.
    - On a CPU, BatchNorm gets its input in the dtype of its running statistics, which vmap's rule needs there.
    - Adaptive average pooling to 1 x 1 is a mean over height and width (the same numbers).
    In fp32 without NHWC only the pooling changes, to the same result.
    """

    LOWER_PRECISION = frozenset({F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, F.linear})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.LOWER_PRECISION and torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            cast = lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
            args, kwargs = tuple(cast(v) for v in args), {k: cast(v) for k, v in kwargs.items()}
        elif func is F.batch_norm:
            x, stats = args[0], args[1] if len(args) > 1 else kwargs.get("running_mean")
            if isinstance(stats, torch.Tensor) and x.dtype != stats.dtype and x.device.type == "cpu":
                args = (x.to(stats.dtype),) + tuple(args[1:])
        elif func is F.adaptive_avg_pool2d:
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            if size in (1, (1, 1), [1, 1]):
                return args[0].mean(dim=(-2, -1), keepdim=True)
        return func(*args, **kwargs)


class StochasticDepthPerFold(nn.Module):
    """torchvision's StochasticDepth (EfficientNet) in a form vmap can run with a separate draw per fold.

    torchvision draws into a fresh unbatched tensor in place (`torch.empty(...).bernoulli_()`), which vmap
    refuses with per-fold randomness; here the uniform draw is shaped after the (batched) input instead.
    Same distribution: each row (or the whole batch) kept with probability 1 - p and scaled by 1 / (1 - p).
    """

    def __init__(self, p: float, mode: str) -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        first = x.shape[0] if self.mode == "row" else 1
        corner = x[(slice(0, first),) + (slice(0, 1),) * (x.ndim - 1)]  # (B, 1, 1, 1) or (1, 1, 1, 1), batched per fold
        noise = (torch.rand_like(corner) < keep).to(x.dtype)
        return x * noise / keep if keep > 0.0 else x * noise


def vmap_ready(base: nn.Module) -> nn.Module:
    """`base` (the stacked models' weightless structure) with modules vmap cannot run per fold replaced by equivalents."""
    from torchvision.ops import StochasticDepth

    for name, module in list(base.named_modules()):
        if isinstance(module, StochasticDepth):
            parent, _, child = name.rpartition(".")
            replacement = StochasticDepthPerFold(module.p, module.mode)
            replacement.train(module.training)
            setattr(base.get_submodule(parent) if parent else base, child, replacement)
    return base


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
        self.base = vmap_ready(copy.deepcopy(models[0]).to("meta"))

        def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        # Dropout and stochastic depth (EfficientNet, MobileNet) draw a separate mask per fold, as separate models would.
        # The draws come from the global generator, so those models match sequential folds in distribution, not draw
        # for draw (ResNets and DenseNets draw nothing in their forward).
        batched = vmap(one, in_dims=(0, 0, 0), randomness="different")

        def forward(x: torch.Tensor) -> torch.Tensor:
            with VmapGapsMode():
                return batched(self.params, self.buffers, x)

        self.forward = forward

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


class FoldModules:
    """K folds' models kept as K plain modules behind the stacked interface: inputs (K, B, 3, H, W) -> logits (K, B, C).

    The GPU's way of training folds together. vmap turned out no faster there than one fold (the H200,
    2026-12-04: 931 images/s for ten ResNet-50 folds stacked against 943 for one, eager bf16), and two of
    its gaps failed on CUDA only (a BatchNorm rule that cannot query NHWC strides, and convolutions left
    in fp32 under autocast). Here every fold runs its own ordinary kernels; with `streams`, each fold's
    forward (and so, by autograd's stream rule, its backward) runs on a CUDA stream of its own, so the
    folds' small kernels overlap on the GPU, and a captured step (core/training/cudagraph.py) becomes one graph
    with a branch per fold.
    """

    def __init__(self, models: list[nn.Module], backbone: str, *, streams: bool = False) -> None:
        self.models, self.backbone = models, backbone
        self.streams = [torch.cuda.Stream(next(models[0].parameters()).device) for _ in models] if streams else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streams is None:
            return torch.stack([model(x[k]) for k, model in enumerate(self.models)])
        current = torch.cuda.current_stream()
        outs = []
        for k, (model, stream) in enumerate(zip(self.models, self.streams)):
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                outs.append(model(x[k]))
        for stream in self.streams:
            current.wait_stream(stream)
        return torch.stack(outs)

    def param_groups(self, *, lr: float, head_lr_factor: float, freeze_backbone: bool) -> list[dict]:
        """The groups of one model (backbone, head), each holding every fold's tensors of that group."""
        merged: dict[str, dict] = {}
        for model in self.models:
            for group in named_param_groups(dict(model.named_parameters()), self.backbone, lr=lr, head_lr_factor=head_lr_factor,
                                            freeze_backbone=freeze_backbone):
                merged.setdefault(group["name"], {**group, "params": []})["params"].extend(group["params"])
        return list(merged.values())

    def train_mode(self, freeze_backbone: bool) -> None:
        for model in self.models:
            set_train_mode(model, self.backbone, freeze_backbone)

    def export(self) -> list[nn.Module]:
        return self.models


def stack(models: list[nn.Module], backbone: str, *, streams: bool | None = None) -> SingleModel | StackedModels | FoldModules:
    """One fold: the module itself; several on a GPU: plain modules, each on its own stream; several on a CPU: vmap.

    `streams` (FoldModules only) defaults to True on CUDA.
    """
    if len(models) == 1:
        return SingleModel(models[0], backbone)
    if next(models[0].parameters()).device.type == "cuda":
        return FoldModules(models, backbone, streams=True if streams is None else streams)
    return StackedModels(models, backbone)


def stacked_param_groups(stacked: SingleModel | StackedModels | FoldModules, *, lr: float, head_lr_factor: float,
                         freeze_backbone: bool) -> list[dict]:
    if isinstance(stacked, FoldModules):
        return stacked.param_groups(lr=lr, head_lr_factor=head_lr_factor, freeze_backbone=freeze_backbone)
    return named_param_groups(stacked.named_parameters(), stacked.backbone, lr=lr, head_lr_factor=head_lr_factor,
                              freeze_backbone=freeze_backbone)
