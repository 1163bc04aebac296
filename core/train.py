"""Train one fold and predict: the loop, its batches and its curve. No storage, no CLI: it returns what it measured.

The held-out fold is a test set. It is passed in only to draw the held-out curve; it never
selects a model, stops training or touches a random generator the training uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import CxrError
from core.augment import AugmentSpec, augment_batch
from core.config import RunConfig, budget
from core.models import make_optimizer, param_groups
from core.runtime import Execution, maybe_compile, resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DivergedError(CxrError):
    """The loss became NaN or infinite: a model past that point predicts garbage, so the fold stops instead of scoring it."""

    def __init__(self, fold: int, iteration: int, loss: float, learning_rate: float) -> None:
        self.fold, self.iteration, self.loss = fold, iteration, loss
        super().__init__(f"fold {fold + 1} diverged at iteration {iteration} (loss {loss}); lower the learning rate "
                         f"(learning_rate={learning_rate:g})")


@dataclass
class FoldOutcome:
    model: nn.Module
    curve: list[dict] = field(default_factory=list)  # phase, iteration, epoch, loss, accuracy, lr, elapsed_s
    test_probs: np.ndarray | None = None  # (n_test, C) softmax probabilities
    iterations: int = 0
    epochs: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def to_input(gray_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) float in [0, 1]."""
    return gray_u8.unsqueeze(1).float().div_(255.0)


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """Grayscale (B, 1, H, W) in [0, 1] -> 3 channels with ImageNet normalisation, as the study's gray->RGB."""
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01.expand(-1, 3, -1, -1) - mean) / std


def _generator(*seed_parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed_parts)).generate_state(1)[0]))


def _train_mode(model: nn.Module, freeze_backbone: bool, head: nn.Module) -> None:
    """Train mode; a frozen backbone keeps its BatchNorm statistics fixed too."""
    model.train()
    if freeze_backbone:
        model.eval()
        head.train()


def train_fold(
    cfg: RunConfig,
    model: nn.Module,
    head: nn.Module,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    fold: int,
    device: torch.device,
    on_iteration: Callable[[dict], None] | None = None,
    execution: Execution | None = None,
) -> FoldOutcome:
    """Train `model` on one fold's training images for the configured budget, then predict its held-out images.

    Args:
        x_train, x_test: (N, H, W) uint8 images (any device; moved to `device` once).
        y_train, y_test: (N,) int64 class indices.
        fold: fold index, mixed into the seeds so folds differ but runs repeat.
        on_iteration: called with every curve row as it is produced (progress, live store).
        execution: precision, memory format and compilation (core.runtime); default: resolved from `cfg` for `device`.

    Batches are gathered by index where the images are (on the GPU when the engine put them there),
    then converted, augmented per image and normalised on `device`.
    """
    ex = execution or resolve(device, cfg.precision, cfg.channels_last, cfg.torch_compile)
    ex.prepare_model(model)
    forward = maybe_compile(model, ex.compile)
    x_train, y_train = x_train.to(device), y_train.to(device)
    groups = param_groups(model, cfg.backbone, lr=cfg.learning_rate, head_lr_factor=cfg.head_lr_factor, freeze_backbone=cfg.freeze_backbone)
    optimizer = make_optimizer(cfg.optimizer, groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    spec = AugmentSpec(prob=cfg.aug_prob, scale=cfg.aug_scale, crop=cfg.aug_crop, translate=cfg.aug_translate)
    shuffle_gen, aug_gen = _generator(cfg.seed, fold, 1), _generator(cfg.seed, fold, 2)
    total, per_epoch = budget(cfg, len(x_train))
    outcome = FoldOutcome(model=model)
    emit = on_iteration or (lambda row: None)
    start = time.perf_counter()
    eval_time = 0.0
    order = torch.empty(0, dtype=torch.long)
    _train_mode(model, cfg.freeze_backbone, head)
    for it in range(1, total + 1):
        pos = (it - 1) % per_epoch
        if pos == 0:  # reshuffle every epoch (MATLAB 'Shuffle','every-epoch')
            order = torch.randperm(len(x_train), generator=shuffle_gen)
        idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size].to(device)
        x = to_input(x_train[idx])
        if cfg.augment:
            x = augment_batch(x, spec, aug_gen)
        y = y_train[idx]
        with ex.autocast():
            logits = forward(ex.prepare_input(normalize(x)))
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # one device-to-host copy per iteration for both numbers (each float() would wait for the GPU)
        loss_value, accuracy = torch.stack([loss.detach().float(), (logits.argmax(1) == y).float().mean()]).tolist()
        row = {
            "phase": "train",
            "iteration": it,
            "epoch": (it - 1) // per_epoch + 1,
            "loss": loss_value,
            "accuracy": accuracy,
            "lr": cfg.learning_rate,
            "elapsed_s": time.perf_counter() - start - eval_time,
        }
        if not math.isfinite(row["loss"]):
            raise DivergedError(fold, it, row["loss"], cfg.learning_rate)
        outcome.curve.append(row)
        emit(row)
        if it % cfg.eval_every == 0 and it != total:
            t0 = time.perf_counter()
            heldout = _heldout_row(model, x_test, y_test, cfg, device, it, per_epoch, ex)
            eval_time += time.perf_counter() - t0
            heldout["elapsed_s"] = time.perf_counter() - start - eval_time
            outcome.curve.append(heldout)
            emit(heldout)
            _train_mode(model, cfg.freeze_backbone, head)
    outcome.train_seconds = time.perf_counter() - start - eval_time
    outcome.iterations, outcome.epochs = total, total / per_epoch

    t0 = time.perf_counter()
    probs = predict_probs(model, x_test, device, batch_size=cfg.eval_batch_size, execution=ex)
    outcome.test_probs = probs
    final = _heldout_from_probs(probs, y_test, total, per_epoch)
    final["elapsed_s"] = outcome.train_seconds
    outcome.curve.append(final)
    emit(final)
    outcome.eval_seconds = eval_time + time.perf_counter() - t0
    return outcome


@torch.no_grad()
def predict_probs(model: nn.Module, x_u8: torch.Tensor, device: torch.device, *, batch_size: int = 64,
                  execution: Execution | None = None) -> np.ndarray:
    """Softmax probabilities (N, C) in eval mode; restores nothing (callers set the mode they need).

    `execution` gives the precision and memory format (as in training); default plain fp32.
    """
    ex = execution or Execution(device=device, amp_dtype=None, channels_last=False)
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        batch = ex.prepare_input(normalize(to_input(x_u8[i : i + batch_size].to(device))))
        with ex.autocast():
            logits = model(batch)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def _heldout_from_probs(probs: np.ndarray, y: torch.Tensor, it: int, per_epoch: int) -> dict:
    y_np = y.cpu().numpy()
    p = np.clip(probs[np.arange(len(y_np)), y_np], 1e-12, 1.0)
    return {
        "phase": "heldout",
        "iteration": it,
        "epoch": math.ceil(it / per_epoch),
        "loss": float(-np.log(p).mean()),
        "accuracy": float((probs.argmax(1) == y_np).mean()),
        "lr": float("nan"),
    }


def _heldout_row(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, cfg: RunConfig, device: torch.device, it: int, per_epoch: int,
                 ex: Execution | None = None) -> dict:
    return _heldout_from_probs(predict_probs(model, x_test, device, batch_size=cfg.eval_batch_size, execution=ex), y_test, it, per_epoch)
