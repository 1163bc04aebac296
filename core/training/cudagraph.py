"""One training step (forward, loss, backward, optimiser step) captured once as a CUDA graph and replayed.

Why: at the study's batch of 25, a ResNet-50 step is about a thousand small kernels, and an H200
finishes each long before Python launches the next. Measured on the H200 (2026-12-04, eager,
bf16, NHWC): 943 images/s for one fold, and 931 for ten folds stacked under vmap, i.e. the GPU
waited for the host either way. A replayed graph launches the whole step at once.

What stays outside the graph, so runs repeat exactly as they did: drawing each fold's batch
indices and augmentation on the CPU from its own generators, gathering, warping and normalising
the batch. The prepared batch is copied into the graph's static input before each replay.

The rules a whole-step capture needs (PyTorch's "CUDA Graphs" notes), and where they are kept:
- warm-up iterations run eagerly on a side stream first (cuDNN autotuning, lazy optimiser state);
  they are real training iterations, so nothing is thrown away;
- gradients are set to None before capture, so backward allocates them inside the graph's memory
  pool and every replay writes them afresh; the optimiser steps inside the graph;
- autocast's weight-cast cache is off in a captured region (`Execution.autocast`);
- no host synchronisation inside the step: the loss and accuracy come back in a static output
  that the caller reads after the replay.
If capture fails (an operation that cannot be captured, an optimiser that is not capturable),
the step warns once and trains eagerly from then on, as `CompiledForward` does for torch.compile:
a run never stops because of this optimisation.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GraphedStep:
    """Runs `step(x, y) -> stats` eagerly for `warmup` calls, then captures it once and replays it for every later call.

    Args:
        step: forward, loss, backward and optimiser step for one batch; returns a small tensor of
            per-fold statistics. It must not zero the gradients itself (see `zero_grad`).
        zero_grad: sets the gradients to None; called before every eager step and once before capture.
        warmup: eager calls before the capture (3, as PyTorch's examples; cuDNN autotuning happens there).
        capture: makes the graph: takes a function, returns (replay, its static output) without running it;
            default CUDA graphs (tests on a CPU pass an emulation, core.training.train a retry with the folds on one stream).
        side_stream: the context eager warm-up runs in; default a fresh CUDA stream.

    The step's inputs must keep their shape, dtype and strides from call to call (one fold's batch does).
    """

    def __init__(self, step: StepFn, zero_grad: Callable[[], None], *, warmup: int = 3,
                 capture: Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]] | None = None,
                 side_stream: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        self.step, self.zero_grad, self.warmup = step, zero_grad, warmup
        self._capture = capture or capture_cuda_graph
        self._side_stream = side_stream or cuda_side_stream
        self.calls = self.replays = 0
        self.failed: str | None = None  # why capture failed; the step is eager from then on
        self._replay: Callable[[], None] | None = None
        self._static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def captured(self) -> bool:
        return self._replay is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.failed is None and self._replay is None and self.calls > self.warmup:
            self._try_capture(x, y)
        if self._replay is not None:
            static_x, static_y, out = self._static
            static_x.copy_(x)
            static_y.copy_(y)
            self._replay()
            self.replays += 1
            return out.clone()
        self.zero_grad()
        if self.failed is None:  # warm-up: on a side stream, as capture needs
            with self._side_stream():
                return self.step(x, y)
        return self.step(x, y)

    def _try_capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        static_x = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device).copy_(x)
        static_y = y.clone()
        self.zero_grad()  # backward allocates the gradients inside the graph's pool
        try:
            replay, out = self._capture(lambda: self.step(static_x, static_y))
        except Exception as exc:  # noqa: BLE001 - any failure means: train eagerly
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.zero_grad()  # drop gradients the aborted capture may have left
            log.warning("CUDA graph capture of the training step failed (%s); training eagerly", self.failed)
            return
        self._replay, self._static = replay, (static_x, static_y, out)

    def close(self) -> None:
        """Release the graph and its memory pool (the gradients live there too, so they are dropped)."""
        self._replay, self._static = None, None
        self.zero_grad()


def capture_cuda_graph(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture `fn` as a CUDA graph; returns (replay, static output). Capture records the kernels without running them."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@contextlib.contextmanager
def cuda_side_stream():
    """Run the body on a fresh stream that first waits for the current one, and make the current one wait for it after."""
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)
