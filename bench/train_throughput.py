"""(b) Training throughput (images/s): our loop against a plain PyTorch one, same model, batch size and optimiser.

Ours: `core.training.train.train_fold` as a run calls it: decoded uint8 images resident on the device,
batches gathered by index there, per-image augmentation in one `grid_sample`, normalisation on
the device, precision and memory format from `core.training.runtime` (`auto`: bf16 + channels_last on
CUDA and on a CPU with bf16 instructions, else fp32 in NCHW).

Baseline: what a plain PyTorch script does: a Dataset that opens and decodes each file every
epoch (`PIL.Image.open(...).convert("RGB")` as torchvision's default loader), torchvision
transforms per sample (Resize, RandomAffine scale, flips, RandomResizedCrop, RandomAffine
translate, each with p = 0.5 like the study), a DataLoader with one worker per CPU, fp32,
NCHW, cuDNN autotuning off. It runs twice: on the original large JPEGs, and on files already
resized to the training size (the best case for the baseline, as if someone had shrunk the
data set beforehand). Both share this process's thread settings with ours.

Where `precision=auto` chose bf16 (a GPU, or a CPU with bf16 instructions), ours runs once more in
fp32, so the table separates what bf16 gives from what the loop gives (the baseline is fp32). On a GPU
ours also runs without CUDA graphs (`cuda_graphs=false`), to show what capturing the step gives;
each of our rows records whether its step was really captured (`cuda_graph`), and whether each step's
loss was read one step late (`read_late`, on a GPU); the folds-at-once row runs again reading it at once.
Ours also runs with several folds at once (core/training/foldstack.py): as many as `parallel_folds=auto` packs on
a GPU (10 at the study's batch of 25 and 224 px), and 2 on a CPU (where auto trains one at a time,
because stacking measured slower there), to show the trade-off on the machine at hand.

Throughput counts only timed iterations after `warmup` (first calls, workers starting).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.sizes import BenchSize
from core.config import RunConfig
from core.data.cache import ImageCache, usable_cpus
from core.training.models import build_model, make_optimizer, param_groups
from core.training.runtime import execution_for
from core.training.runtime import pack_size
from core.training.train import IMAGENET_MEAN, IMAGENET_STD, FoldData, train_folds


def _config(size: BenchSize, device: torch.device, iterations: int, precision: str = "auto", cuda_graphs: bool = True) -> RunConfig:
    """The study's optimisation (SGDM, lr 1e-4, head x10, L2 1e-4) and augmentation at this mode's model size."""
    return RunConfig(backbone=size.backbone, weights="none", image_size=size.image_size, batch_size=size.batch_size,
                     max_iterations=iterations, eval_every=10**6, augment=True, device=device.type, precision=precision,
                     cuda_graphs=cuda_graphs)


def ours(size: BenchSize, files: list[str], labels: np.ndarray, device: torch.device, cache_dir: Path, *, folds: int = 1,
         precision: str = "auto", cuda_graphs: bool = True, read_late: bool | None = None) -> dict:
    """Our loop; with `folds` > 1, that many folds trained at once (core/training/foldstack.py), each with its own model,
    shuffling and augmentation over the same images. Images/s counts every fold's images. `read_late` overrides
    whether each step's loss is read one step late (core.training.train.StepReader; default: on a GPU)."""
    loaded = ImageCache(cache_dir).load_many(files, size.image_size)
    pixels = torch.from_numpy(np.stack([item.pixels for item in loaded])).to(device)  # one transfer, as the engine
    y = torch.from_numpy(labels).to(device)
    total = size.warmup + size.iterations
    cfg = _config(size, device, total, precision, cuda_graphs)
    jobs = []
    for k in range(folds):
        torch.manual_seed(k)
        model, _ = build_model(size.backbone, 2, "none")
        jobs.append(FoldData(k, model, pixels, y, pixels[: size.batch_size], y[: size.batch_size]))
    ex = execution_for(cfg, device)
    if read_late is not None:
        ex = dataclasses.replace(ex, read_late=read_late)
    out = train_folds(cfg, jobs, device=device, execution=ex)[0]
    # a pack's elapsed_s is each fold's share (wall / folds), so this is the pack's images per second of wall time
    elapsed = [row["elapsed_s"] for row in out.curve if row["phase"] == "train"]
    timed = elapsed[-1] - elapsed[size.warmup - 1]
    return {"img_per_s": size.iterations * size.batch_size / timed, "seconds": timed * folds, "iterations": size.iterations,
            "folds_at_once": folds, "precision": ex.precision, "channels_last": ex.channels_last, "cuda_graph": out.graph,
            "read_late": ex.read_late}


class FileDataset(torch.utils.data.Dataset):
    """Decodes its files on every access, as torchvision's ImageFolder does."""

    def __init__(self, paths: list[str], labels: np.ndarray, transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            rgb = img.convert("RGB")
        return self.transform(rgb), int(self.labels[i])


def baseline_transform(size: int, p: float = 0.5, scale: float = 0.1, crop: float = 0.8, translate: float = 0.1):
    """The study's augmentation written the usual torchvision way (per sample, inside the Dataset)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize((size, size), antialias=True),
        v2.PILToTensor(),
        v2.RandomApply([v2.RandomAffine(degrees=0, scale=(1 - scale, 1 + scale))], p=p),
        v2.RandomHorizontalFlip(p),
        v2.RandomVerticalFlip(p),
        v2.RandomApply([v2.RandomResizedCrop(size, scale=(crop**2, 1.0), ratio=(1.0, 1.0), antialias=True)], p=p),
        v2.RandomApply([v2.RandomAffine(degrees=0, translate=(translate, translate))], p=p),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def baseline(size: BenchSize, files: list[str], labels: np.ndarray, device: torch.device, *, workers: int | None = None) -> dict:
    workers = usable_cpus() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        FileDataset(files, labels, baseline_transform(size.image_size)), batch_size=size.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
    )
    cfg = _config(size, device, 0)
    torch.manual_seed(0)
    model, _ = build_model(size.backbone, 2, "none")
    model.to(device).train()
    optimizer = make_optimizer(cfg.optimizer, param_groups(model, cfg.backbone, lr=cfg.learning_rate, head_lr_factor=cfg.head_lr_factor,
                                                            freeze_backbone=False), momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = size.warmup + size.baseline_iterations
    benchmark_before, tf32_before = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = False  # a plain script does not turn it on
    torch.backends.cudnn.allow_tf32 = True  # and keeps torch's default of TF32 convolutions on a GPU
    it, start = 0, None
    try:
        while it < total:
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss.item()  # the usual per-iteration logging (and the point where the GPU is waited for)
                it += 1
                if it == size.warmup:
                    start = time.perf_counter()
                if it == total:
                    break
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = benchmark_before, tf32_before
        del loader  # stops persistent workers
    timed = time.perf_counter() - start
    return {"img_per_s": size.baseline_iterations * size.batch_size / timed, "seconds": timed, "iterations": size.baseline_iterations,
            "workers": workers, "precision": "fp32", "channels_last": False}


def resized_copies(files: list[str], folder: Path, side: int) -> list[str]:
    """The same images written as PNGs at the training size (the baseline's best case)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(files):
        with Image.open(path) as img:
            target = folder / f"{i:04d}.png"
            img.draft("L", (side, side))  # preparation, not timed: libjpeg's scaled decoding saves seconds
            img.convert("L").resize((side, side), Image.BICUBIC).save(target)
        out.append(str(target))
    return out


def run(size: BenchSize, files: list[str], device: torch.device, workdir: Path, *, log=print) -> dict:
    labels = (np.arange(len(files)) % 2).astype(np.int64)
    log(f"(b) training throughput: {size.backbone} at {size.image_size} px, batch {size.batch_size}, on {device.type}")
    small = resized_copies(files, workdir / "resized", size.image_size)
    result = {"backbone": size.backbone, "image_size": size.image_size, "batch_size": size.batch_size, "warmup": size.warmup}
    result["ours"] = ours(size, files, labels, device, workdir / "cache_train")
    log(f"    ours: {result['ours']['img_per_s']:.1f} images/s ({result['ours']['precision']}; CUDA graph: {result['ours']['cuda_graph']})")
    if result["ours"]["cuda_graph"] is not None:  # how much of the gain is the CUDA graph
        result["ours_eager"] = ours(size, files, labels, device, workdir / "cache_train", cuda_graphs=False)
        log(f"    ours without CUDA graphs: {result['ours_eager']['img_per_s']:.1f} images/s")
    if result["ours"]["precision"] != "fp32":  # how much of the gain is bf16, and how much the loop
        result["ours_fp32"] = ours(size, files, labels, device, workdir / "cache_train", precision="fp32")
        log(f"    ours in fp32: {result['ours_fp32']['img_per_s']:.1f} images/s")
    # Folds at once: what `parallel_folds=auto` picks on a GPU; on a CPU (where auto is 1) two, to show the trade-off.
    together = pack_size(0, device=device, batch_size=size.batch_size, image_size=size.image_size, folds=10)
    result["ours_folds_together"] = ours(size, files, labels, device, workdir / "cache_train", folds=together if together > 1 else 2)
    log(f"    ours, {result['ours_folds_together']['folds_at_once']} folds at once: {result['ours_folds_together']['img_per_s']:.1f} images/s"
        f" (CUDA graph: {result['ours_folds_together']['cuda_graph']})")
    if result["ours_folds_together"]["read_late"]:  # how much reading each step's loss one step late gives (a GPU)
        result["ours_folds_together_read_at_once"] = ours(size, files, labels, device, workdir / "cache_train",
                                                          folds=result["ours_folds_together"]["folds_at_once"], read_late=False)
        log(f"    the same, each step's loss read at once: {result['ours_folds_together_read_at_once']['img_per_s']:.1f} images/s")
    result["baseline_files"] = baseline(size, files, labels, device)
    log(f"    baseline, decoding the original files: {result['baseline_files']['img_per_s']:.1f} images/s")
    result["baseline_resized"] = baseline(size, small, labels, device)
    log(f"    baseline, decoding files already at {size.image_size} px: {result['baseline_resized']['img_per_s']:.1f} images/s")
    return result
