"""The mixer's causal depthwise convolution and its SiLU, compiled for the CPU with numba.

``out_t = silu(bias + sum_i w_i x_{t-k+1+i})`` per channel (zeros before the start), as
``mamba_ssm`` runs it through ``causal_conv1d_fn(..., activation="silu")`` on a GPU. torch's
CPU path is a padded ``conv1d`` (both sides, the causal part kept) and a separate SiLU, in
(batch, channels, L) while the projections around them are (batch, L, channels): four layout
copies and two passes per layer and step, and a depthwise backward that took as long as the
convolution's weight gradient of a dense layer. Here both directions work on (batch, L,
channels) in blocks of ``compiled.LANES`` channels side by side, like the scan kernels.

Backward recomputes the pre-activation (nothing but the input is saved) and goes through time
in tiles of ``TILE`` steps: each tile's ``dL/d(pre)`` is computed for the tile and the ``k - 1``
steps after it (recomputed by the next tile), then ``dx`` of the tile from them. Weight and
bias gradients go to one slot per batch row, summed by the caller: results do not depend on
the thread count.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from .compiled import _FASTMATH, LANES, _channels, _exp, _lanes, _result, _share, padded

TILE = 64


@functools.cache
def kernels():
    """``(forward_blocks, backward_blocks)``; the block width ``LANES`` is a compile-time constant."""
    W = LANES

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def load_block(wt, bias, d0, w_blk, b_blk):  # pragma: no cover - compiled
        """The weights and bias of channels ``d0 .. d0 + W - 1``, into the kernel's own arrays."""
        for l in range(W):
            b_blk[l] = bias[d0 + l]
            for i in range(wt.shape[0]):
                w_blk[i, l] = wt[i, d0 + l]

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def pre_activation(x, bi, t, d0, w_blk, b_blk, acc):  # pragma: no cover - compiled
        """``acc = bias + sum_i w_i x_{t-k+1+i}`` for the block's channels (zeros before the start)."""
        K = w_blk.shape[0]
        for l in range(W):
            acc[l] = b_blk[l]
        for i in range(max(0, K - 1 - t), K):
            xr = x[bi, t - (K - 1) + i, d0:d0 + W]
            for l in range(W):
                acc[l] += w_blk[i, l] * xr[l]

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def forward_blocks(x, wt, bias, out, start, stop):  # pragma: no cover - compiled
        """Blocks ``start..stop-1`` (block = b * blocks per row + i) of ``out``; ``x, out``: (batch,
        L, channels); ``wt``: (k, channels), ``bias``: (channels,)."""
        n_b, L, dp = x.shape
        K = wt.shape[0]
        n_blk = dp // W
        one = x.dtype.type(1.0)
        w_blk = np.empty((K, W), dtype=x.dtype)
        b_blk, acc = np.empty(W, dtype=x.dtype), np.empty(W, dtype=x.dtype)
        for item in range(start, stop):
            bi, d0 = item // n_blk, (item % n_blk) * W
            load_block(wt, bias, d0, w_blk, b_blk)
            for t in range(L):
                pre_activation(x, bi, t, d0, w_blk, b_blk, acc)
                o = out[bi, t, d0:d0 + W]
                for l in range(W):
                    o[l] = acc[l] / (one + _exp(-acc[l]))

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def backward_blocks(x, wt, bias, gout, dx, dw, dbias, start, stop):  # pragma: no cover - compiled
        """``dx`` (batch, L, channels), ``dw`` (batch, k, channels) and ``dbias`` (batch, channels)
        for blocks ``start..stop-1``, from ``gout``, the gradient of ``out``."""
        n_b, L, dp = x.shape
        K = wt.shape[0]
        n_blk = dp // W
        one = x.dtype.type(1.0)
        w_blk = np.empty((K, W), dtype=x.dtype)
        b_blk, acc = np.empty(W, dtype=x.dtype), np.empty(W, dtype=x.dtype)
        gp = np.empty((TILE + K - 1, W), dtype=x.dtype)  # dL/d(pre) of the tile and the k - 1 steps after it
        sw, sb = np.empty((K, W), dtype=x.dtype), np.empty(W, dtype=x.dtype)
        for item in range(start, stop):
            bi, d0 = item // n_blk, (item % n_blk) * W
            load_block(wt, bias, d0, w_blk, b_blk)
            sw[:] = 0.0
            sb[:] = 0.0
            for t0 in range(0, L, TILE):
                t1 = min(L, t0 + TILE)
                te = min(L, t1 + K - 1)
                for t in range(t0, te):
                    pre_activation(x, bi, t, d0, w_blk, b_blk, acc)
                    gr, g = gout[bi, t, d0:d0 + W], gp[t - t0]
                    for l in range(W):  # silu'(p) = s (1 + p (1 - s)), s = sigmoid(p)
                        p = acc[l]
                        s = one / (one + _exp(-p))
                        g[l] = gr[l] * s * (one + p * (one - s))
                    if t < t1:  # the tile's own steps: weight and bias gradients
                        for l in range(W):
                            sb[l] += g[l]
                        for i in range(max(0, K - 1 - t), K):
                            xr = x[bi, t - (K - 1) + i, d0:d0 + W]
                            for l in range(W):
                                sw[i, l] += g[l] * xr[l]
                for tt in range(t0, t1):  # x_tt feeds outputs tt .. tt + k - 1, through w_{k-1} .. w_0
                    for l in range(W):
                        acc[l] = 0.0
                    for i in range(max(0, tt + K - te), K):
                        g = gp[tt + (K - 1) - i - t0]
                        for l in range(W):
                            acc[l] += w_blk[i, l] * g[l]
                    o = dx[bi, tt, d0:d0 + W]
                    for l in range(W):
                        o[l] = acc[l]
            for l in range(W):
                dbias[bi, d0 + l] = sb[l]
                for i in range(K):
                    dw[bi, i, d0 + l] = sw[i, l]

    return forward_blocks, backward_blocks


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ct: torch.dtype) -> torch.Tensor:
    """``silu(causal_conv(x))`` in ``ct``, (batch, channels, L) stored lanes-last; weight (channels, k)."""
    b, d, L = x.shape
    dp = padded(d)
    out = torch.empty((b, L, dp), dtype=ct)
    bias_np = _channels(bias if bias is not None else weight.new_zeros(d), ct, dp)
    args = (_lanes(x, ct, dp), _channels(weight.t(), ct, dp, 2), bias_np, out.numpy())
    _share(kernels()[0], b * (dp // LANES), b * dp * L * weight.shape[1] * 4, *args)
    return _result(out, d)


def backward(grad, x, weight, bias, ct):
    """``(dx, dweight, dbias)``: dx in ``ct``, stored lanes-last; dweight (channels, k); dbias
    (channels,) or None without a bias."""
    b, d, L = x.shape
    k = weight.shape[1]
    dp = padded(d)
    dx = torch.empty((b, L, dp), dtype=ct)
    dw, dbias = torch.empty((b, k, dp), dtype=ct), torch.empty((b, dp), dtype=ct)
    bias_np = _channels(bias if bias is not None else weight.new_zeros(d), ct, dp)
    args = (_lanes(x, ct, dp), _channels(weight.t(), ct, dp, 2), bias_np, _lanes(grad, ct, dp),
            dx.numpy(), dw.numpy(), dbias.numpy())
    _share(kernels()[1], b * (dp // LANES), b * dp * L * k * 12, *args)
    return _result(dx, d), dw.sum(0)[:, :d].t().contiguous(), (dbias.sum(0)[:d] if bias is not None else None)
