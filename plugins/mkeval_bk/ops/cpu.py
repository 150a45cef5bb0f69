"""The fast PyTorch path: chunked scans of the BK recursion, vectorised over systems and chunks.

Why hand-written: torch has no op for a continued fraction or a time-varying linear
recurrence, and a per-position loop pays one Python step (several kernel launches) per
position. Here the sequence is cut into ``K`` chunks of ``L ~ sqrt(N)`` positions, and every
Python step works on all systems and all chunks at once:

forward (the nonlinear continued fraction ``g_i = 1 / (d_i - c_{i-1} g_{i-1})``)
  1. ``L`` steps: each chunk composes its positions' Moebius maps ``[[0, 1], [-c, d]]`` into
     one 2x2 matrix (rescaled every few steps; only its projective class matters),
  2. ``K`` steps: a carry pass applies the chunk maps in turn to get ``g`` entering each chunk,
  3. ``L`` steps: each chunk reruns the continued fraction from its exact carry, so every
     output is produced by the same stable recursion as the reference.

backward (the linear adjoint ``lam_i = w_i + m_i lam_{i+1}``, ``m_i = c_i g_{i+1}^2``)
  1. ``L`` steps: each chunk's local solution with a zero carry, and ``cumprod`` of ``m``,
  2. ``K`` steps: the carries,
  3. one vectorised step: ``lam = local + prod * carry``.

Work is O(N) per system, Python steps about ``2 L + K`` forwards and ``L + K`` backwards.
Arithmetic is complex128 throughout (the launch overhead, not the arithmetic, dominates at
these sizes), and output ``i`` reads only positions ``<= i``: the chunk map of chunk ``k`` is
used only by later chunks, so outputs are causal bit for bit. The products ``prod m`` are
derivatives ``dg_j/dg_i`` of maps of the upper half plane into itself, bounded by
``Im g_j / Im g_i`` (Schwarz-Pick), so the backward cannot overflow either.
"""

from __future__ import annotations

import math

import torch

_RESCALE_EVERY = 8  # 8 composed maps grow entries by at most (|d| + c / Im z)^8: far inside float64


def chunk_length(n: int) -> int:
    """Positions per chunk; the forward costs about ``5 L + 3 K`` launches, minimised near this."""
    return max(1, min(n, round(math.sqrt(0.6 * n))))


def _to_chunks(x: torch.Tensor, n_chunks: int, length: int) -> torch.Tensor:
    """``[S, N]`` -> complex128 ``[L, S, K]``, zero past ``N``: position-in-chunk first, so that
    each Python step reads one contiguous ``[S, K]`` slab."""
    s, n = x.shape
    padded = n_chunks * length > n
    out = (torch.zeros if padded else torch.empty)((length, s, n_chunks), dtype=torch.complex128, device=x.device)
    full = n // length
    if full:
        out[:, :, :full] = x[:, : full * length].reshape(s, full, length).permute(2, 0, 1)
    if n > full * length:
        out[: n - full * length, :, full] = x[:, full * length :].T
    return out


def _from_chunks(parts: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
    """``L`` tensors ``[S, K]`` (one per position in chunk) -> ``[S, N]`` of ``dtype``."""
    x = torch.stack(parts, dim=-1)  # [S, K, L]: already in sequence order
    x = x.reshape(x.shape[0], -1)
    return x[:, :n].to(dtype).contiguous()


def causal_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    zr: torch.Tensor,
    zi: torch.Tensor,
    out_dtype: torch.dtype = torch.complex128,
    chunk: int | None = None,
) -> torch.Tensor:
    """``g`` (``out_dtype`` ``[S, N]``) from ``a [S, N]``, ``b [S, N-1]``, ``zr, zi [S]``."""
    s, n = a.shape
    length = chunk or chunk_length(n)
    k = -(-n // length)
    # d = a - z; positions past N get d = -i Im z and c = 0, and only feed outputs that are cut off.
    d = _to_chunks(a, k, length)
    d -= torch.complex(zr.double(), zi.double())[None, :, None]
    cc = _to_chunks(torch.nn.functional.pad(b, (1, 0)), k, length)  # cc_i = off_{i-1}, 0 at i = 0
    cc.mul_(cc)
    ds, cs = d.unbind(0), cc.unbind(0)

    # 1. compose each chunk's maps: rows (A, B) <- (C, D), (C, D) <- d (C, D) - c (A, B)
    one = torch.ones((s, k), dtype=torch.complex128, device=a.device)
    zero = torch.zeros_like(one)
    top, bottom = torch.stack([one, zero]), torch.stack([zero, one])
    for j in range(length):
        top, bottom = bottom, torch.addcmul(ds[j] * bottom, cs[j], top, value=-1)
        if j % _RESCALE_EVERY == _RESCALE_EVERY - 1 or j == length - 1:
            # |top| <= |bottom| / Im z entry by entry, so the bottom row sets the scale.
            scale = bottom.abs().sum(0).reciprocal_()
            top, bottom = top * scale, bottom * scale
    A, B = top.unbind(0)
    C, D = bottom.unbind(0)

    # 2. carries: g entering chunk k is chunk (k-1)'s map applied to g entering chunk k-1
    carries = [torch.zeros(s, dtype=torch.complex128, device=a.device)]
    As, Bs, Cs, Ds = A.unbind(1), B.unbind(1), C.unbind(1), D.unbind(1)
    for i in range(k - 1):
        x = carries[-1]
        carries.append(torch.addcmul(Bs[i], As[i], x) / torch.addcmul(Ds[i], Cs[i], x))
    g = torch.stack(carries, dim=1)

    # 3. rerun the continued fraction inside every chunk from its carry
    out = []
    for j in range(length):
        g = torch.addcmul(ds[j], cs[j], g, value=-1).reciprocal_()
        out.append(g)
    return _from_chunks(out, n, out_dtype)


def causal_backward(
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    out_dtype: torch.dtype = torch.complex128,
    chunk: int | None = None,
) -> torch.Tensor:
    """``Lambda = dL/dd`` (``out_dtype`` ``[S, N]``) given ``g [S, N]``, ``b [S, N-1]`` and
    ``w = conj(grad_g)``."""
    s, n = g.shape
    length = chunk or chunk_length(n)
    k = -(-n // length)
    # m_i = c_i g_{i+1}^2 couples lam_i to lam_{i+1}; m_{N-1} = 0 ends the recurrence.
    m = _to_chunks(g[:, 1:], k, length)
    m.mul_(m).mul_(_to_chunks(b, k, length).square_())
    gc = _to_chunks(g, k, length)
    wc = _to_chunks(w, k, length)
    ms, ws = m.unbind(0), wc.unbind(0)

    # 1. local solutions from the end of each chunk with a zero carry, and the products of m
    #    that carry the true value in: lam_i = local_i + prod_i * lam_(start of next chunk)
    h = torch.zeros((s, k), dtype=torch.complex128, device=g.device)
    local = [None] * length
    for j in range(length - 1, -1, -1):
        h = torch.addcmul(ws[j], ms[j], h)
        local[j] = h
    prod = m.flip(0).cumprod(0).flip(0)

    # 2. carries, from the last chunk back: lam at the first position of chunk i+1
    carries = [torch.zeros(s, dtype=torch.complex128, device=g.device)]
    first_local, first_prod = local[0].unbind(1), prod[0].unbind(1)
    for i in range(k - 1, 0, -1):
        carries.append(torch.addcmul(first_local[i], first_prod[i], carries[-1]))
    carry = torch.stack(carries[::-1], dim=1)  # carry[:, i] = lam at the start of chunk i+1

    # 3. every position at once, and Lambda = -lam g^2
    lam = torch.stack(local).addcmul_(prod, carry)
    lam.mul_(gc).mul_(gc).neg_()
    return _from_chunks(list(lam.unbind(0)), n, out_dtype)
