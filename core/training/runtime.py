"""How training runs on a device: threads, mixed precision, memory format, cuDNN autotuning and optional torch.compile.

One place decides these for the engine, the benchmark and the tests, so a run on a CPU and a
run on a GPU execute the same training code and differ only in the settings resolved here:

| setting | CPU | CUDA |
|---|---|---|
| `precision=auto` | bf16 autocast on a CPU with bf16 instructions (AVX512-BF16, AMX): 1.2-1.7x faster training measured; else fp32 (bf16 measured 20x slower without them) | bf16 autocast (weights, optimiser and loss stay fp32) when the GPU supports bf16 |
| `channels_last=auto` | on with bf16 (oneDNN's bf16 kernels want NHWC: ResNet-50 at 224 px trained 1.6x faster, 2026-12-02, AMX CPU); off in fp32 (ResNet-18 at 64 px: 0.78-0.99x of NCHW) | on (tensor cores want NHWC) |
| threads (`num_threads=0`) | the physical cores, one inter-op thread | the same, for the host side |
| `cudnn.benchmark` | - | on (fixed input sizes: the fastest kernels are picked once) |
| evaluation and heat-map batches | as they come (a short last batch costs less) | padded to one fixed size (`fixed_batches`), so cuDNN autotunes one shape, not one per fold's remainder |
| TF32 convolutions | - | off (torch's default is on): fp32 is fp32 |
| `torch_compile` | off unless asked; falls back to eager when compilation fails | same, in `reduce-overhead` mode (CUDA graphs: one launch per captured graph instead of one per kernel) |
| `cuda_graphs` | - (CUDA only) | on unless torch_compile is: each training step is captured once and replayed (core/training/cudagraph.py) |
| reading each step's loss | at once | one step late, so the host prepares the next batch while the GPU trains (`StepReader` in core/training/train.py) |
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.config import MEMORY_FORMATS, PRECISIONS

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Execution:
    """The resolved execution settings of one run (what `auto` became on this device)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool
    compile: bool = False
    graphs: bool = False  # the training step is captured as a CUDA graph (core/training/cudagraph.py)
    read_late: bool = False  # each step's loss is read on the host one step late (core.training.train.StepReader)

    @property
    def compile_mode(self) -> str:
        """torch.compile's mode: CUDA graphs on a GPU, where launch overhead dominates at batch 25; plain on the CPU."""
        return "reduce-overhead" if self.device.type == "cuda" else "default"

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        parts = ([self.precision] + (["channels_last"] if self.channels_last else []) + (["compiled"] if self.compile else [])
                 + (["CUDA graphs"] if self.graphs else []))
        return ", ".join(parts)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass (and the loss); a no-op for fp32.

        A captured CUDA graph must not use autocast's cache of cast weights (it would replay stale casts).
        """
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, cache_enabled=not self.graphs)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device (and to NHWC when chosen), in place; returns the same module."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def resolve(device: torch.device, precision: str = "auto", channels_last: str = "auto", torch_compile: bool = False,
            cuda_graphs: bool = True) -> Execution:
    """Turn the config's names into concrete settings for `device`; bf16 on a GPU without it is refused.

    CUDA graphs apply on CUDA only, and not with torch_compile, whose `reduce-overhead` mode makes its own.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if channels_last not in MEMORY_FORMATS:
        raise ValueError(f"channels_last must be one of {MEMORY_FORMATS}, got {channels_last!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        amp = torch.bfloat16 if native else None
    else:
        amp = torch.bfloat16 if precision == "bf16" else None
    if amp is not None and cuda and not torch.cuda.is_bf16_supported():
        from core import CxrError

        raise CxrError("precision=bf16 needs a GPU with bfloat16 support (Ampere or newer); use --set precision=fp32")
    # auto: NHWC on a GPU, and on a CPU when it computes in bf16 (see the table above; docs/benchmarks.md has the figures)
    nhwc = (cuda or amp is not None) if channels_last == "auto" else channels_last == "on"
    return Execution(device=device, amp_dtype=amp, channels_last=nhwc, compile=torch_compile,
                     graphs=cuda and cuda_graphs and not torch_compile, read_late=cuda)


def execution_for(cfg, device: torch.device) -> Execution:
    """`resolve` with a RunConfig's settings (the engine, the training loop and the benchmark all start here)."""
    return resolve(device, cfg.precision, cfg.channels_last, cfg.torch_compile, cfg.cuda_graphs)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512-BF16 or AMX-BF16), from the kernel's CPU flags.

    Only then is bf16 autocast worth it on a CPU: ResNet-18 at 64 px, batch 25, 2 cores trained
    1.2-1.7x faster in bf16 than in fp32 with AVX512-BF16 (2026-12-02, six alternating pairs), and
    about 20x slower than fp32 without it (2026-11-26). oneDNN's own check is not used because it
    also says yes where bf16 is only emulated. Outside Linux the answer is no: fp32, never a slow surprise.
    """
    try:
        return has_bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def has_bf16_flags(cpuinfo: str) -> bool:
    """True when `/proc/cpuinfo` text lists a native bf16 instruction set."""
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


def fixed_batches(device: torch.device) -> bool:
    """Whether evaluation and heat-map passes pad their last batch to the full batch size on `device`.

    Why: with `cudnn.benchmark` on, cuDNN times every convolution algorithm for each input shape it has not
    seen (forward and backward for a heat map). A fold's held-out images rarely fill their last batch, and the
    remainder differs from fold to fold, so each fold would pay for a new autotuning of the whole network.
    Padded with blank rows (each row of an eval-mode network depends only on its own image, so the real rows'
    results do not change; tests/test_explain.py checks it), every pass has one shape. On a CPU there is no
    autotuning and the blank rows would only cost time.
    """
    return device.type == "cuda"


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with zero rows appended along the first dimension up to `rows` (unchanged when it has as many)."""
    missing = rows - len(x)
    return x if missing <= 0 else torch.cat([x, x.new_zeros((missing, *x.shape[1:]))])


def setup_device(device: torch.device, num_threads: int = 0) -> int:
    """Process-wide settings before training: CPU threads and, on CUDA, cuDNN autotuning.

    Returns the number of intra-op threads in use.
    """
    threads = num_threads or physical_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        # Eager training has no inter-op parallelism to use; one thread avoids idle spinners. Only settable once.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # torch lets cuDNN convolutions run in TF32 (10-bit mantissa) by default; matrix products are already
        # full fp32. Off, so that precision=fp32 means what it says; bf16 autocast is the fast path.
        torch.backends.cudnn.allow_tf32 = False
    return threads


def physical_cores() -> int:
    """Physical cores this process may use: usable CPUs divided by hardware threads per core (SMT siblings)."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows): logical CPUs
        return os.cpu_count() or 1
    cores = set()
    for cpu in usable:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def maybe_compile(model: Callable[..., torch.Tensor], enabled: bool, mode: str = "default") -> Callable[..., torch.Tensor]:
    """The callable the training loop should use for forward passes: torch.compile(model) when asked, else the model.

    `model` is a module or the forward function of folds stacked under vmap (core/training/foldstack.py).

    Compilation happens lazily at the first call; `CompiledForward` catches a failure there and
    falls back to the eager model for the rest of the run (with one warning), so `torch_compile=true`
    can never stop a run.
    """
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, mode=mode)
    except Exception as exc:  # an unsupported platform or Python
        log.warning("torch.compile is not available here (%s: %s); training eagerly", type(exc).__name__, exc)
        return model
    return CompiledForward(model, compiled)


class CompiledForward:
    """Calls the compiled model; if compiling or running it fails, the eager model takes over for good."""

    def __init__(self, eager: Callable[..., torch.Tensor], compiled: Callable[..., torch.Tensor]) -> None:
        self.eager, self.compiled, self.failed = eager, compiled, False

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # inductor needs a C compiler, triton a supported GPU, ...
                self.failed = True
                log.warning("torch.compile failed (%s: %s); training eagerly", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return self.eager(*args, **kwargs)


def resident_pixels(data, device: torch.device) -> torch.Tensor:
    """The data set's uint8 images (N, S, S) on `device`: one transfer per run, reused by every fold.

    Kept on the prepared data object, so folds (and a resumed run's remaining folds) gather their
    batches by index on the GPU instead of copying the training set again. At 224 px an image is
    50 KB, so 1,000 images take 50 MB and 100,000 take 5 GB; a set that would take more than half
    of the GPU's free memory stays in host memory and is copied per fold instead.
    """
    store = data.__dict__.setdefault("_resident_pixels", {})
    key = str(device)
    if key not in store:
        pixels = torch.from_numpy(data.pixels)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if pixels.nbytes <= free // 2:
                pixels = pixels.to(device)
            else:
                log.warning("the data set (%.1f GB) does not fit comfortably in GPU memory; it stays in host memory", pixels.nbytes / 1e9)
        store[key] = pixels
    return store[key]


# Images of 224 px per optimiser step at which we guess a data-centre GPU is busy with arithmetic rather than
# waiting for kernel launches. A guess, not a measurement (no GPU has run this code yet): `python -m core bench`
# on a GPU times the pack it gives against one fold at a time, and `parallel_folds=N` overrides it.
GPU_FILL_IMAGES_224 = 256


def pack_size(parallel_folds: int, *, device: torch.device, batch_size: int, image_size: int, folds: int) -> int:
    """How many folds to train at once (core/training/foldstack.py): the setting when given, else the `auto` rule.

    auto: 1 on the CPU, where stacked folds measured slower than one after another (forward and
    backward of 5 ResNet-18s at 64 px, batch 32, 2 cores: 2.0-2.7 s stacked against 0.9-1.0 s; 2 folds
    through the training loop in bf16: 0.61-0.99x the images/s, `python -m core bench --quick`); on CUDA, enough folds that a step
    holds about GPU_FILL_IMAGES_224 images of 224 px (the study's batch of 25: 10 folds).
    Too many for the GPU's memory is handled by the engine, which splits a pack that runs out.
    """
    if parallel_folds:
        return max(1, min(parallel_folds, folds))
    if device.type != "cuda":
        return 1
    per_step = batch_size * (image_size / 224) ** 2
    return max(1, min(folds, int(GPU_FILL_IMAGES_224 // max(per_step, 1e-9))))


def plan_packs(todo: list[int], size: int, keys: dict[int, tuple]) -> list[list[int]]:
    """Split the folds still to train into packs of at most `size` folds that share a key (iteration budget, batch).

    Folds keep their order within a key; with equal keys (the usual case) packs are consecutive runs of `todo`.
    >>> plan_packs([0, 1, 2, 3, 4], 2, {k: (250, 25) for k in range(5)})
    [[0, 1], [2, 3], [4]]
    """
    by_key: dict[tuple, list[int]] = {}
    for fold in todo:
        by_key.setdefault(keys[fold], []).append(fold)
    packs = [group[i : i + size] for group in by_key.values() for i in range(0, len(group), max(1, size))]
    return sorted(packs, key=lambda pack: todo.index(pack[0]))
