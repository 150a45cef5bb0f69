"""Measurement: FLOPs per training step and what they leave out, peak memory, and the device a number came from.

FLOPs are ``torch.utils.flop_counter.FlopCounterMode``'s, with two additions it lacks (see
``docs/flops.md``): convolution formulas, because torch counts a grouped convolution's weight
gradient as if it were dense (``groups`` times too many), and a coverage tally.
``FlopCounterMode`` silently counts zero for every op without a formula; the tally, a
``TorchDispatchMode`` below it that sees the same ops after the same decompositions, says
which ops those were, so a recurrence without a formula (an LSTM kernel, a custom op) is named
in the result instead of vanishing from it.
"""

from __future__ import annotations

import platform
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable

import psutil
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


@dataclass
class StepFlops:
    """FLOPs of one training step, and the ops that ran without being counted.

    ``forward`` and ``backward`` follow ``FlopCounterMode``'s convention: matrix products,
    convolutions, attention, and every op a formula is registered for (the core's and the
    plugins'). Elementwise and row-wise work (activations, norms, softmax, losses, residual
    adds) is not in them; its size is in ``elementwise_elements_*``. ``uncounted`` names every
    other op that did arithmetic without a formula: empty means nothing beyond elementwise work
    was left out.
    """

    forward: int
    backward: int
    counted: dict[str, int] = field(default_factory=dict)  # op -> FLOPs, forward + backward
    uncounted: dict[str, int] = field(default_factory=dict)  # op -> calls, forward + backward
    elementwise_elements_forward: int = 0
    elementwise_elements_backward: int = 0


# --------------------------------------------------------------------------- core formulas
def conv_forward_flops(x_shape, w_shape, out_shape, transposed: bool) -> int:
    """2 per multiply-add of a convolution, grouped or not.

    ``w_shape`` is ``(C_out, C_in / groups, *kernel)`` (transposed: ``(C_in, C_out / groups,
    *kernel)``), so ``prod(w_shape)`` is already the multiply-adds per batch element and
    position; as in torch's ``conv_flop_count``, positions are the output's (transposed: the
    input's) and padding is computed like any other position.
    """
    positions = prod((x_shape if transposed else out_shape)[2:])
    return 2 * x_shape[0] * positions * prod(w_shape)


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: the forward's count once per gradient asked for.

    The input gradient pairs every weight with every output position it touched, and the
    weight gradient sums the same products over batch and positions: each has exactly the
    forward's multiply-adds, grouped or not. torch's ``conv_backward_flop`` counts the
    weight gradient as a dense convolution (C_in instead of C_in / groups), which for a
    depthwise convolution is ``groups`` times the truth.
    """
    forward = conv_forward_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def conv_flops(x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None,
               **kwargs) -> int:
    """``aten.convolution``: the same count as torch's (already right for groups), registered so
    that forward and backward share one definition."""
    return conv_forward_flops(x_shape, w_shape, out_shape, transposed)


# Formulas the core adds to FlopCounterMode's own; a plugin's formula for the same op wins.
CORE_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten.convolution: conv_flops,
    aten._convolution: conv_flops,
    aten.convolution_backward: conv_backward_flops,
}


# --------------------------------------------------------------------------- coverage
# Ops that only create, copy or rearrange data: no arithmetic, so nothing is missing when they
# count zero. (Views and ops that return no tensor are recognised from the op itself.)
NO_ARITHMETIC_OPS = frozenset({
    "aten._to_copy", "aten.copy", "aten.copy_", "aten.clone", "aten._unsafe_view", "aten.cat", "aten.stack",
    "aten.constant_pad_nd", "aten.embedding", "aten.index_select", "aten.gather", "aten.scatter", "aten.scatter_",
    "aten.index", "aten.flip", "aten.roll", "aten.repeat", "aten.slice_backward", "aten.select_backward",
    "aten.slice_scatter", "aten.select_scatter", "aten.as_strided_scatter", "aten.diagonal_backward",
    "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
    "aten.zeros", "aten.zeros_like", "aten.new_zeros", "aten.ones", "aten.ones_like", "aten.new_ones",
    "aten.full", "aten.full_like", "aten.new_full", "aten.fill_", "aten.zero_", "aten.scalar_tensor",
    "aten.arange", "aten.lift_fresh_copy", "aten.one_hot", "aten.masked_fill", "aten.where",
    "aten.bernoulli_", "aten.uniform_", "aten.normal_", "aten.rand", "aten.randn", "aten.randint",
    "aten.rand_like", "aten.randn_like", "aten.randint_like",
})
# A few FLOPs per element, like the ops torch tags ``pointwise`` or ``reduction``, but untagged.
ELEMENTWISE_OPS = frozenset({
    "aten._softmax", "aten._softmax_backward_data", "aten._log_softmax", "aten._log_softmax_backward_data",
    "aten.nll_loss_forward", "aten.nll_loss_backward", "aten.nll_loss2d_forward", "aten.nll_loss2d_backward",
    "aten.mse_loss", "aten.mse_loss_backward", "aten.smooth_l1_loss", "aten.smooth_l1_loss_backward",
    "aten.binary_cross_entropy", "aten.binary_cross_entropy_backward",
    "aten.binary_cross_entropy_with_logits",
    "aten.native_layer_norm", "aten.native_layer_norm_backward", "aten._fused_rms_norm",
    "aten._fused_rms_norm_backward", "aten.native_group_norm", "aten.native_group_norm_backward",
    "aten.native_batch_norm", "aten.native_batch_norm_backward", "aten._native_batch_norm_legit",
    "aten._native_batch_norm_legit_no_training", "aten.native_dropout", "aten.native_dropout_backward",
    "aten.embedding_dense_backward", "aten.index_add", "aten.scatter_add", "aten.scatter_reduce",
    "aten.index_put", "aten.index_put_", "aten._index_put_impl_", "aten.cumsum", "aten.cumprod",
    "aten.topk", "aten.sort", "aten.softplus_backward", "aten.hardtanh_backward", "aten.leaky_relu_backward",
    "aten.elu_backward", "aten.mish_backward", "aten.hardswish_backward", "aten.hardsigmoid_backward",
    "aten.glu", "aten.glu_backward",
})
_VIEW_TAGS = (torch.Tag.inplace_view,)
_ELEMENTWISE_TAGS = (torch.Tag.pointwise, torch.Tag.reduction)


def op_kind(func: Any, out: Any) -> str:
    """``"none"`` (no arithmetic: views, metadata, data movement), ``"elementwise"`` (a few FLOPs
    per element), or ``"arithmetic"`` (anything else: it needs a formula to be counted)."""
    name = str(func._overloadpacket)
    if getattr(func, "is_view", False) or any(t in _VIEW_TAGS for t in getattr(func, "tags", ())):
        return "none"
    if name in NO_ARITHMETIC_OPS or not any(isinstance(x, torch.Tensor) for x in tree_leaves(out)):
        return "none"
    if name in ELEMENTWISE_OPS or any(t in _ELEMENTWISE_TAGS for t in getattr(func, "tags", ())):
        return "elementwise"
    return "arithmetic"


class _Coverage(TorchDispatchMode):
    """Entered just outside a ``FlopCounterMode``: sees each op that mode runs (after its
    decompositions, before the kernel) and tallies those without a formula."""

    supports_higher_order_operators = True  # pass them through: FlopCounterMode decides about those

    def __init__(self, formulas: dict[Any, Any]):
        super().__init__()
        self.formulas = formulas
        self.uncounted: Counter[str] = Counter()
        self.elementwise_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(func, torch._ops.OpOverload) and func._overloadpacket not in self.formulas:
            kind = op_kind(func, out)
            if kind == "elementwise":
                tensors = [x for x in tree_leaves((args, kwargs, out)) if isinstance(x, torch.Tensor)]
                self.elementwise_elements += max(t.numel() for t in tensors)
            elif kind == "arithmetic":
                self.uncounted[str(func._overloadpacket)] += 1
        return out


def count_step_flops(
    model: nn.Module,
    input_ids: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    custom_formulas: dict[Any, Any] | None = None,
) -> StepFlops:
    """Forward and backward FLOPs of one step on ``input_ids``, by ``FlopCounterMode`` with the
    core's formulas (``CORE_FLOP_FORMULAS``) and ``custom_formulas`` (the plugins'), and the
    ops that ran without a formula (see ``StepFlops``). Gradients are cleared afterwards.
    """
    formulas = {**CORE_FLOP_FORMULAS, **(custom_formulas or {})}
    passes = []
    loss = None
    for step in ("forward", "backward"):
        counter = FlopCounterMode(display=False, custom_mapping=formulas)
        coverage = _Coverage(counter.flop_registry)
        with coverage, counter:  # coverage first, so that it sits below the counter
            if step == "forward":
                loss = loss_fn(model(input_ids))
            else:
                loss.backward()
        passes.append((counter, coverage))
    model.zero_grad(set_to_none=True)
    (fwd, fwd_cov), (bwd, bwd_cov) = passes
    counted: Counter[str] = Counter()
    for counter, _ in passes:
        for op, flops in counter.get_flop_counts().get("Global", {}).items():
            counted[str(op)] += int(flops)
    return StepFlops(
        forward=int(fwd.get_total_flops()),
        backward=int(bwd.get_total_flops()),
        counted=dict(sorted(counted.items())),
        uncounted=dict(sorted((fwd_cov.uncounted + bwd_cov.uncounted).items())),
        elementwise_elements_forward=fwd_cov.elementwise_elements,
        elementwise_elements_backward=bwd_cov.elementwise_elements,
    )


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

    def __init__(self, device: torch.device, seconds: float = 0.0):
        self.device = device
        self.seconds = seconds  # a resumed loop starts from the time already spent
        self._start: float | None = None

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self._start = None

    def elapsed(self) -> float:
        """Seconds so far, including the block still running."""
        return self.seconds + (time.perf_counter() - self._start if self._start is not None else 0.0)
