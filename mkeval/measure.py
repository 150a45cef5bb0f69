"""Measurement: FLOPs per training step, peak memory, and the device a number came from."""

from __future__ import annotations

import platform
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class StepFlops:
    forward: int
    backward: int


def count_step_flops(
    model: nn.Module,
    input_ids: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    custom_formulas: dict[Any, Any] | None = None,
) -> StepFlops:
    """Forward and backward FLOPs of one step on ``input_ids``, by ``FlopCounterMode``.

    Ops without a formula (built-in or registered by a plugin) count as zero, as in
    ``FlopCounterMode``. Gradients are cleared afterwards.
    """
    with FlopCounterMode(display=False, custom_mapping=custom_formulas or {}) as fwd:
        loss = loss_fn(model(input_ids))
    with FlopCounterMode(display=False, custom_mapping=custom_formulas or {}) as bwd:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return StepFlops(forward=int(fwd.get_total_flops()), backward=int(bwd.get_total_flops()))


class PeakMemory:
    """Peak memory over a block, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process's peak
    resident set size, sampled every ``interval`` seconds in a background thread (it
    includes the Python and torch runtime, so it is an upper bound on what the model needs).
    """

    def __init__(self, device: torch.device, interval: float = 0.01):
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.method = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            proc = psutil.Process()
            self.peak_bytes = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def describe_device(device: torch.device) -> dict[str, Any]:
    """What a result records about where it was measured."""
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                    capability=[props.major, props.minor])
    else:
        info.update(name=platform.processor() or platform.machine(), cpu_count=psutil.cpu_count(logical=True))
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates wall time over several ``with`` blocks (synchronising CUDA at the edges)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
