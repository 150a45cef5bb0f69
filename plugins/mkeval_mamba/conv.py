"""The mixer's causal depthwise convolution with its SiLU, as one ``torch.library`` custom op.

``causal_conv1d_silu(x, weight, bias)`` is ``silu(conv1d(x, weight, bias, padding=k-1,
groups=channels)[..., :L])`` (``reference``), with ``x`` (batch, channels, L) and ``weight``
(channels, k): ``causal_conv1d_fn(x, weight, bias, activation="silu")`` of the
``causal-conv1d`` package, which the ``cuda`` backend calls. The ``compiled`` backend runs it
here, on ``compiled_conv.py``'s numba kernels (CPU tensors), forward and backward each one
op, with FLOP formulas; results are stored lanes-last, like the projections around it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .scan import _compute_dtype, _lanes_last


def reference(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """What torch's layers compute (the ``torch`` and ``reference`` backends' path)."""
    k = weight.shape[1]
    return F.silu(F.conv1d(x, weight.unsqueeze(1), bias, padding=k - 1, groups=x.shape[1])[..., : x.shape[2]])


def _kernels(x: Tensor):
    if x.device.type != "cpu":
        raise ValueError(f"the compiled causal convolution runs on CPU tensors, not {x.device.type}")
    from . import compiled_conv

    return compiled_conv


@torch.library.custom_op("mkeval_mamba::causal_conv1d_silu", mutates_args=())
def causal_conv1d_silu_op(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``reference(x, weight, bias)``, computed by the compiled kernel."""
    return _kernels(x).forward(x, weight, bias, _compute_dtype(x.dtype)).to(x.dtype)


@torch.library.custom_op("mkeval_mamba::causal_conv1d_silu_backward", mutates_args=())
def causal_conv1d_silu_backward_op(grad: Tensor, x: Tensor, weight: Tensor,
                                   bias: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for ``x, weight, bias`` (the last empty without a bias)."""
    dx, dw, db = _kernels(x).backward(grad, x, weight, bias, _compute_dtype(x.dtype))
    return dx.to(x.dtype), dw.to(weight.dtype), x.new_empty(0) if db is None else db.to(bias.dtype)


@causal_conv1d_silu_op.register_fake
def _fake_forward(x, weight, bias):
    return _lanes_last(x, x.shape[1], x.dtype)


@causal_conv1d_silu_backward_op.register_fake
def _fake_backward(grad, x, weight, bias):
    return (_lanes_last(x, x.shape[1], x.dtype), weight.new_empty(weight.shape),
            x.new_empty(0) if bias is None else bias.new_empty(bias.shape))


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = torch.ops.mkeval_mamba.causal_conv1d_silu_backward(grad, x, weight, bias)
    return dx, dw, db if ctx.has_bias else None


causal_conv1d_silu_op.register_autograd(_backward, setup_context=_setup_context)


def causal_conv1d_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``reference(x, weight, bias)`` on the compiled kernels (CPU tensors; numba)."""
    return torch.ops.mkeval_mamba.causal_conv1d_silu(x, weight, bias)


# FLOPs per (batch, channel, position), counting the maths as the scan's formulas do: forward
# k products and k - 1 sums plus the bias (2k), silu = p / (1 + exp(-p)) (3); backward recomputes
# those (2k + 3), silu' = g s (1 + p (1 - s)) (5), dx and dweight (2k each), dbias (1).
def conv_flops_per_position(k: int) -> tuple[int, int]:
    """(forward, backward) FLOPs of ``causal_conv1d_silu`` per (batch, channel, position)."""
    return 2 * k + 3, 6 * k + 9


def _forward_flops(x_shape, weight_shape, bias_shape, *args, out_shape=None, **kwargs) -> int:
    return math.prod(x_shape) * conv_flops_per_position(weight_shape[1])[0]


def _backward_flops(grad_shape, x_shape, weight_shape, bias_shape, *args, out_shape=None, **kwargs) -> int:
    return math.prod(x_shape) * conv_flops_per_position(weight_shape[1])[1]


FLOP_FORMULAS = {
    torch.ops.mkeval_mamba.causal_conv1d_silu: _forward_flops,
    torch.ops.mkeval_mamba.causal_conv1d_silu_backward: _backward_flops,
}
