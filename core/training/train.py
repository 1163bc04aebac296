"""Train one fold, or a pack of folds at once, and predict: the loop, its batches and its curves. No storage, no CLI:
it returns what it measured.

The held-out fold is a test set. It is passed in only to draw the held-out curve; it never
selects a model, stops training or touches a random generator the training uses.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import CxrError
from core.training.augment import AugmentSpec, affine_matrices, sample_params, warp
from core.training.cudagraph import GraphedStep, capture_cuda_graph
from core.config import RunConfig, budget
from core.training.foldstack import stack, stacked_param_groups
from core.training.models import make_optimizer
from core.training.runtime import Execution, execution_for, fixed_batches, maybe_compile, pad_rows

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DivergedError(CxrError):
    """The loss became NaN or infinite: a model past that point predicts garbage, so the fold stops instead of scoring it."""

    def __init__(self, fold: int, iteration: int, loss: float, learning_rate: float) -> None:
        self.fold, self.iteration, self.loss, self.learning_rate = fold, iteration, loss, learning_rate
        super().__init__(f"fold {fold + 1} diverged at iteration {iteration} (loss {loss}); lower the learning rate "
                         f"(learning_rate={learning_rate:g})")

    def __reduce__(self):  # rebuilt from its fields when it crosses a process boundary (a Ray worker's error)
        return (type(self), (self.fold, self.iteration, self.loss, self.learning_rate))


@dataclass
class FoldOutcome:
    model: nn.Module
    curve: list[dict] = field(default_factory=list)  # phase, iteration, epoch, loss, accuracy, lr, elapsed_s
    test_probs: np.ndarray | None = None  # (n_test, C) softmax probabilities
    iterations: int = 0
    epochs: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    # with CUDA graphs: {"captured", "replays", "failed" (why capture failed, or None), "streams"}; None when not asked for
    graph: dict | None = None


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


@dataclass
class FoldData:
    """One fold's inputs to `train_folds`: its freshly built model and its images."""

    fold: int  # index mixed into the seeds, so folds differ but runs repeat
    model: nn.Module
    x_train: torch.Tensor  # (N, H, W) uint8, any device (moved to the run's device once)
    y_train: torch.Tensor  # (N,) int64 class indices
    x_test: torch.Tensor
    y_test: torch.Tensor


def step_shape(cfg: RunConfig, n_train: int) -> tuple[int, int]:
    """(iterations, images per batch) of a fold with `n_train` training images: folds train together only when equal."""
    return budget(cfg, n_train)[0], min(cfg.batch_size, n_train)


def train_fold(
    cfg: RunConfig,
    model: nn.Module,
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
        execution: precision, memory format and compilation (core.training.runtime); default: resolved from `cfg` for `device`.

    The one-fold case of `train_folds`.
    """
    emit = on_iteration or (lambda row: None)
    job = FoldData(fold, model, x_train, y_train, x_test, y_test)
    return train_folds(cfg, [job], device=device, on_iteration=lambda _fold, row: emit(row), execution=execution)[0]


def train_folds(
    cfg: RunConfig,
    jobs: list[FoldData],
    *,
    device: torch.device,
    on_iteration: Callable[[int, dict], None] | None = None,
    execution: Execution | None = None,
) -> list[FoldOutcome]:
    """Train K folds for the configured budget, one optimiser step for all K per iteration, then predict each held-out fold.

    Args:
        jobs: the folds, each with its own freshly built model; all must have the same iteration
            budget and batch size (`core.training.engine` groups them so).
        on_iteration: called with (fold, curve row) for every row of every fold as it is produced.

    Returns:
        One FoldOutcome per job, in order, each holding its own trained module.

    K = 1 trains the module itself; K > 1 trains the models together (core/training/foldstack.py): stacked under vmap
    on a CPU, as plain modules on a CUDA stream each on a GPU. On a GPU the whole step (forward, backward,
    optimiser) is captured once as a CUDA graph and replayed (core/training/cudagraph.py, `cuda_graphs`).
    Each fold draws its batches and augmentation from its own generators, seeded by `cfg.seed`
    and its fold index, so a fold sees the same images in the same order whether it trains alone
    or with others. Batches are gathered by index where the images are (on the GPU when the engine
    put them there), then converted, augmented per image and normalised on `device`, all folds'
    images in one call. The pack's time is shared: each fold's `elapsed_s` and `train_seconds`
    are 1/K of the pack's, so the folds of a run add up to its wall time.

    Raises:
        DivergedError: for the first fold (in `jobs` order) whose training loss is not finite.
        ValueError: folds whose budgets or batch sizes differ.
    """
    ex = execution or execution_for(cfg, device)
    k_folds = len(jobs)
    if len({step_shape(cfg, len(job.x_train)) for job in jobs}) > 1:
        raise ValueError("folds trained together need the same iteration budget and batch size; train them apart")
    total, batch = step_shape(cfg, len(jobs[0].x_train))
    budgets = [budget(cfg, len(job.x_train)) for job in jobs]
    for job in jobs:
        ex.prepare_model(job.model)
    models = stack([job.model for job in jobs], cfg.backbone)
    forward = maybe_compile(models.forward, ex.compile, ex.compile_mode)
    x_train = [job.x_train.to(device) for job in jobs]
    y_train = [job.y_train.to(device) for job in jobs]
    groups = stacked_param_groups(models, lr=cfg.learning_rate, head_lr_factor=cfg.head_lr_factor, freeze_backbone=cfg.freeze_backbone)
    optimizer = make_optimizer(cfg.optimizer, groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay, capturable=ex.graphs)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, per-fold losses, backward and the optimiser step; returns (2, K): each fold's loss and batch accuracy."""
        with ex.autocast():
            logits = forward(x)  # (K, B, C)
            losses = torch.stack([F.cross_entropy(logits[k], y[k]) for k in range(k_folds)])
        losses.sum().backward()  # fold k's parameters get exactly the gradient of fold k's loss
        optimizer.step()
        return torch.stack([losses.detach().float(), (logits.argmax(-1) == y).float().mean(1)])

    def zero_grad() -> None:
        optimizer.zero_grad(set_to_none=True)

    run_step = graphed_step(step, zero_grad, models) if ex.graphs else None
    spec = AugmentSpec(prob=cfg.aug_prob, scale=cfg.aug_scale, crop=cfg.aug_crop, translate=cfg.aug_translate)
    shuffle_gens = [_generator(cfg.seed, job.fold, 1) for job in jobs]
    aug_gens = [_generator(cfg.seed, job.fold, 2) for job in jobs]
    outcomes = [FoldOutcome(model=job.model) for job in jobs]
    emit = on_iteration or (lambda fold, row: None)
    start = time.perf_counter()
    eval_time = 0.0  # the pack's, excluded from training time
    eval_seconds = [0.0] * k_folds  # each fold's own
    orders = [torch.empty(0, dtype=torch.long)] * k_folds
    reader = StepReader(late=ex.read_late)
    elapsed = 0.0

    def record(it: int, values: list[list[float]]) -> None:
        """Each fold's curve row of training iteration `it`; the first fold whose loss is not finite stops the pack."""
        nonlocal elapsed
        loss_values, accuracies = values
        elapsed = (time.perf_counter() - start - eval_time) / k_folds
        for k, job in enumerate(jobs):
            row = {
                "phase": "train",
                "iteration": it,
                "epoch": (it - 1) // budgets[k][1] + 1,
                "loss": loss_values[k],
                "accuracy": accuracies[k],
                "lr": cfg.learning_rate,
                "elapsed_s": elapsed,
            }
            if not math.isfinite(row["loss"]):
                raise DivergedError(job.fold, it, row["loss"], cfg.learning_rate)
            outcomes[k].curve.append(row)
            emit(job.fold, row)

    models.train_mode(cfg.freeze_backbone)
    for it in range(1, total + 1):
        xs, ys = [], []
        for k, (_, per_epoch) in enumerate(budgets):
            pos = (it - 1) % per_epoch
            if pos == 0:  # reshuffle every epoch (MATLAB 'Shuffle','every-epoch'), drawn on the CPU, copied once per epoch
                orders[k] = torch.randperm(len(x_train[k]), generator=shuffle_gens[k]).to(device)
            idx = orders[k][pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
            xs.append(x_train[k][idx])
            ys.append(y_train[k][idx])
        x = to_input(torch.cat(xs))  # (K*B, 1, H, W)
        if cfg.augment:  # each fold's draws from its own generator, all images warped in one call
            x = warp(x, torch.cat([affine_matrices(sample_params(batch, spec, g)) for g in aug_gens]))
        y = torch.stack(ys)  # (K, B)
        x = ex.prepare_input(normalize(x)).unflatten(0, (k_folds, batch))
        if run_step is not None:
            stats = run_step(x, y)
        else:
            zero_grad()
            stats = step(x, y)
        for done_it, values in reader.push(it, stats):
            record(done_it, values)
        if it % cfg.eval_every == 0 and it != total:
            for done_it, values in reader.flush():
                record(done_it, values)
            t0 = time.perf_counter()
            trained = models.export()
            for k, job in enumerate(jobs):
                t1 = time.perf_counter()
                heldout = _heldout_row(trained[k], job.x_test, job.y_test, cfg, device, it, budgets[k][1], ex)
                eval_seconds[k] += time.perf_counter() - t1
                heldout["elapsed_s"] = elapsed
                outcomes[k].curve.append(heldout)
                emit(job.fold, heldout)
            eval_time += time.perf_counter() - t0
            models.train_mode(cfg.freeze_backbone)
    for done_it, values in reader.flush():
        record(done_it, values)
    train_seconds = (time.perf_counter() - start - eval_time) / k_folds
    if run_step is not None:
        graph = {"captured": run_step.replays > 0, "replays": run_step.replays, "failed": run_step.failed,
                 "streams": getattr(models, "streams", None) is not None}
        run_step.close()  # frees the graph's memory (and the gradients in it) before evaluation and Grad-CAM
        for out in outcomes:
            out.graph = dict(graph)

    trained = models.export()
    for k, job in enumerate(jobs):
        out = outcomes[k]
        out.model, out.train_seconds = trained[k], train_seconds
        out.iterations, out.epochs = total, total / budgets[k][1]
        t0 = time.perf_counter()
        out.test_probs = predict_probs(trained[k], job.x_test, device, batch_size=cfg.eval_batch_size, execution=ex)
        final = _heldout_from_probs(out.test_probs, job.y_test, total, budgets[k][1])
        final["elapsed_s"] = train_seconds
        out.curve.append(final)
        emit(job.fold, final)
        out.eval_seconds = eval_seconds[k] + time.perf_counter() - t0
    return outcomes


class StepReader:
    """The numbers of each training step (every fold's loss and accuracy) on the host: at once, or one step late on a GPU.

    Why: reading a GPU tensor waits for everything queued before it. Read right after step t is launched, the
    host idles while step t runs, and the GPU then idles while the host draws, warps and normalises batch t+1.
    With `late`, step t's numbers are copied to pinned host memory without waiting and read only after step
    t+1 is launched: they were computed before step t+1 began, so the read waits for nothing the GPU still has
    to do, and the host prepares batch t+2 while the GPU works. The rows are the same, one step later; a
    diverged loss still names its own iteration. One device-to-host copy per step carries all the numbers.
    """

    def __init__(self, *, late: bool) -> None:
        self.late = late
        self._pending: tuple[int, torch.Tensor, object, torch.Tensor] | None = None

    def push(self, it: int, stats: torch.Tensor) -> list[tuple[int, list[list[float]]]]:
        """Hand over step `it`'s (2, K) numbers; returns the steps now readable, oldest first, as (iteration, values)."""
        if not self.late:
            return [(it, stats.tolist())]
        if stats.is_cuda:
            host = stats.to("cpu", non_blocking=True)  # into pinned memory, queued behind the step
            copied = torch.cuda.Event()
            copied.record()
        else:  # the same bookkeeping where there is no stream to wait on (tests on a CPU)
            host, copied = stats.clone(), None
        ready = self.flush()
        self._pending = (it, host, copied, stats)  # `stats` kept alive until its copy is done (its memory is not reused)
        return ready

    def flush(self) -> list[tuple[int, list[list[float]]]]:
        """The step still held back, if any (before a held-out check, and after the last step)."""
        if self._pending is None:
            return []
        it, host, copied, _ = self._pending
        self._pending = None
        if copied is not None:
            copied.synchronize()
        return [(it, host.tolist())]


def graphed_step(step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], zero_grad: Callable[[], None], models) -> GraphedStep:
    """The training step as a CUDA graph (core/training/cudagraph.py). Folds trained together on their own streams are
    captured as one graph with a branch per fold; if that capture fails, it is tried once more with the folds
    on one stream, and then the step stays eager."""

    def capture(fn):
        try:
            return capture_cuda_graph(fn)
        except Exception as exc:  # noqa: BLE001
            if getattr(models, "streams", None) is None:
                raise
            log.warning("capturing %d folds on their own streams failed (%s: %s); capturing them on one stream",
                        len(models.models), type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            models.streams = None
            zero_grad()
            return capture_cuda_graph(fn)

    return GraphedStep(step, zero_grad, capture=capture)


@torch.no_grad()
def predict_probs(model: nn.Module, x_u8: torch.Tensor, device: torch.device, *, batch_size: int = 64,
                  execution: Execution | None = None, fixed: bool | None = None) -> np.ndarray:
    """Softmax probabilities (N, C) in eval mode; restores nothing (callers set the mode they need).

    `execution` gives the precision and memory format (as in training); default plain fp32. `fixed` pads the
    last batch to `batch_size` (default: on a GPU, `core.training.runtime.fixed_batches`).
    """
    ex = execution or Execution(device=device, amp_dtype=None, channels_last=False)
    pad = fixed_batches(device) if fixed is None else fixed
    model.eval()
    out = []
    for i in range(0, len(x_u8), batch_size):
        chunk = x_u8[i : i + batch_size].to(device)
        batch = ex.prepare_input(normalize(to_input(pad_rows(chunk, batch_size) if pad else chunk)))
        with ex.autocast():
            logits = model(batch)[: len(chunk)]
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
