"""Triton kernels for the BK recursion on CUDA (and on CPU under ``TRITON_INTERPRET=1``).

The same three-pass chunked scan as ``cpu.py``, with one program per (block of systems,
chunk): systems run across lanes, positions run along a loop, so all ``S x K`` chunks of
``L`` positions advance in parallel and the only sequential pass is the ``K``-step carry.

forward:  ``_fwd_maps`` composes each chunk's Moebius maps (rescaled every step),
          ``_fwd_carry`` applies them in turn, ``_fwd_apply`` reruns the continued fraction
          from each chunk's exact carry and writes ``g``.
backward: ``_bwd_maps`` solves each chunk of ``lam_i = w_i + m_i lam_{i+1}`` with a zero
          carry and multiplies its ``m``, ``_bwd_carry`` chains the chunks from the end,
          ``_bwd_apply`` reruns each chunk from its carry and writes ``Lambda = -lam g^2``.

Memory layout. The kernels address element ``(s, i)`` of a ``[S, N]`` array as
``s * stride_s + i * stride_n``, so one kernel serves two layouts (``LAYOUT_ENV``):

``positions`` (default)  the launcher transposes inputs to positions-major ``[N, S]`` and the
                         outputs back: at every step the lanes of a program read and write
                         neighbouring systems, i.e. contiguous memory (coalesced), at the
                         cost of a transpose pass on each side;
``systems``              the tensors as the op holds them, ``[S, N]``: no transposes, but each
                         lane reads a different row, ``N`` elements apart (the layout measured
                         at 5% of an H100's bandwidth, kept for comparison in
                         ``tools/gpu_checks.sh``).

The per-chunk maps and carries are stored component-major (``[components, K, S]``), so they
are coalesced too. Positions within a chunk advance ``UNROLL`` at a time in straight-line
code, so a program has several independent loads in flight instead of one.

Arithmetic is float64 in registers (complex numbers as (re, im) pairs); inputs and outputs
keep their own dtype. A float32 continued fraction loses about ``eps / Im z`` relative
accuracy over long sequences (1e-5 at Im z = 0.01); float64 keeps the kernels within
float32 rounding of the exact answer for any ``Im z``.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
"""Whether these kernels were built for Triton's CPU interpreter: ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates, so ``op.py`` reloads this module if that changes."""

LAYOUT_ENV = "MKEVAL_BK_TRITON_LAYOUT"
LAYOUTS = ("positions", "systems")
UNROLL = 4  # positions per straight-line step of the loops; chunk lengths are multiples of it


def layout() -> str:
    """The memory layout the launchers use: ``$MKEVAL_BK_TRITON_LAYOUT``, default ``positions``."""
    name = os.environ.get(LAYOUT_ENV, "").strip() or "positions"
    if name not in LAYOUTS:
        raise ValueError(f"{LAYOUT_ENV}={name!r} is not a layout; choose one of {', '.join(LAYOUTS)}")
    return name


def chunk_length(n: int) -> int:
    """Positions per chunk: about sqrt(N), a multiple of UNROLL, at least 16 so that short
    sequences stay one chunk."""
    length = max(16, math.isqrt(max(n - 1, 0)) + 1)
    return -(-length // UNROLL) * UNROLL


def _block_systems(s: int, positions_major: bool) -> int:
    if positions_major:
        # lanes read neighbouring systems: up to 128 systems (4 warps) per program
        return max(16, min(128, triton.next_power_of_2(s)))
    # one warp of systems per program: more, shorter programs hide the loop's latency better
    return max(16, min(32, triton.next_power_of_2(s)))


# --------------------------------------------------------------------------- forward
@triton.jit
def _fwd_maps(a_ptr, b_ptr, zr_ptr, zi_ptr, maps_ptr, S, N, L, K, sa_s, sa_n, sb_s, sb_n,
              BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    k = tl.program_id(1)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    zr = tl.load(zr_ptr + s64, mask=live, other=0.0).to(tl.float64)
    zi = tl.load(zi_ptr + s64, mask=live, other=1.0).to(tl.float64)
    di = -zi
    zero = tl.zeros([BLOCK_S], dtype=tl.float64)
    # rows (A, B) and (C, D) of the composed map, as (re, im) pairs
    ar, ai, br, bi = zero + 1.0, zero, zero, zero
    cr, ci, dr_, di_ = zero, zero, zero + 1.0, zero
    for j0 in range(0, L, UNROLL):
        for jj in tl.static_range(UNROLL):
            i = s64 * 0 + (k * L + j0 + jj)  # int64: offsets i * stride may pass 2^31
            ok = live & (i < N)
            a = tl.load(a_ptr + s64 * sa_s + i * sa_n, mask=ok, other=0.0).to(tl.float64)
            bp = tl.load(b_ptr + s64 * sb_s + (i - 1) * sb_n, mask=ok & (i > 0), other=0.0).to(tl.float64)
            c = bp * bp
            dr = a - zr
            # (A, B) <- (C, D);  (C, D) <- d (C, D) - c (A, B)
            ncr = dr * cr - di * ci - c * ar
            nci = dr * ci + di * cr - c * ai
            ndr = dr * dr_ - di * di_ - c * br
            ndi = dr * di_ + di * dr_ - c * bi
            ar, ai, br, bi = cr, ci, dr_, di_
            scale = 1.0 / (tl.abs(ncr) + tl.abs(nci) + tl.abs(ndr) + tl.abs(ndi))
            ar, ai, br, bi = ar * scale, ai * scale, br * scale, bi * scale
            cr, ci, dr_, di_ = ncr * scale, nci * scale, ndr * scale, ndi * scale
    # component-major [8, K, S]: the lanes' stores are contiguous
    base = maps_ptr + k * S + s64
    plane = K * S
    tl.store(base + 0 * plane, ar, mask=live)
    tl.store(base + 1 * plane, ai, mask=live)
    tl.store(base + 2 * plane, br, mask=live)
    tl.store(base + 3 * plane, bi, mask=live)
    tl.store(base + 4 * plane, cr, mask=live)
    tl.store(base + 5 * plane, ci, mask=live)
    tl.store(base + 6 * plane, dr_, mask=live)
    tl.store(base + 7 * plane, di_, mask=live)


@triton.jit
def _fwd_carry(maps_ptr, carry_ptr, S, K, BLOCK_S: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    plane = K * S
    xr = tl.zeros([BLOCK_S], dtype=tl.float64)
    xi = tl.zeros([BLOCK_S], dtype=tl.float64)
    for k in range(0, K):
        tl.store(carry_ptr + k * S + s64, xr, mask=live)
        tl.store(carry_ptr + plane + k * S + s64, xi, mask=live)
        base = maps_ptr + k * S + s64
        ar = tl.load(base + 0 * plane, mask=live, other=0.0)
        ai = tl.load(base + 1 * plane, mask=live, other=0.0)
        br = tl.load(base + 2 * plane, mask=live, other=0.0)
        bi = tl.load(base + 3 * plane, mask=live, other=0.0)
        cr = tl.load(base + 4 * plane, mask=live, other=0.0)
        ci = tl.load(base + 5 * plane, mask=live, other=0.0)
        dr = tl.load(base + 6 * plane, mask=live, other=1.0)
        di = tl.load(base + 7 * plane, mask=live, other=0.0)
        nr = ar * xr - ai * xi + br
        ni = ar * xi + ai * xr + bi
        mr = cr * xr - ci * xi + dr
        mi = cr * xi + ci * xr + di
        den = 1.0 / (mr * mr + mi * mi)
        xr, xi = (nr * mr + ni * mi) * den, (ni * mr - nr * mi) * den


@triton.jit
def _fwd_apply(a_ptr, b_ptr, zr_ptr, zi_ptr, carry_ptr, out_ptr, S, N, L, K, sa_s, sa_n, sb_s, sb_n, so_s, so_n,
               BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    k = tl.program_id(1)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    zr = tl.load(zr_ptr + s64, mask=live, other=0.0).to(tl.float64)
    zi = tl.load(zi_ptr + s64, mask=live, other=1.0).to(tl.float64)
    gr = tl.load(carry_ptr + k * S + s64, mask=live, other=0.0)
    gi = tl.load(carry_ptr + K * S + k * S + s64, mask=live, other=0.0)
    for j0 in range(0, L, UNROLL):
        for jj in tl.static_range(UNROLL):
            i = s64 * 0 + (k * L + j0 + jj)  # int64: offsets i * stride may pass 2^31
            ok = live & (i < N)
            a = tl.load(a_ptr + s64 * sa_s + i * sa_n, mask=ok, other=0.0).to(tl.float64)
            bp = tl.load(b_ptr + s64 * sb_s + (i - 1) * sb_n, mask=ok & (i > 0), other=0.0).to(tl.float64)
            c = bp * bp
            # g <- 1 / (d - c g)
            er = a - zr - c * gr
            ei = -zi - c * gi
            den = 1.0 / (er * er + ei * ei)
            gr, gi = er * den, -ei * den
            o = out_ptr + s64 * so_s + i * so_n  # (re, im) pairs: so_s, so_n count floats
            tl.store(o, gr.to(out_ptr.dtype.element_ty), mask=ok)
            tl.store(o + 1, gi.to(out_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- backward
@triton.jit
def _bwd_step_inputs(g_ptr, b_ptr, w_ptr, s64, i, N, ok, sg_s, sg_n, sb_s, sb_n):
    """w_i and m_i = c_i g_{i+1}^2 (zero past the end) at position i (g and w share strides)."""
    wr = tl.load(w_ptr + s64 * sg_s + i * sg_n, mask=ok, other=0.0).to(tl.float64)
    wi = tl.load(w_ptr + s64 * sg_s + i * sg_n + 1, mask=ok, other=0.0).to(tl.float64)
    nxt = ok & (i + 1 < N)
    b = tl.load(b_ptr + s64 * sb_s + i * sb_n, mask=nxt, other=0.0).to(tl.float64)
    hr = tl.load(g_ptr + s64 * sg_s + (i + 1) * sg_n, mask=nxt, other=0.0).to(tl.float64)
    hi = tl.load(g_ptr + s64 * sg_s + (i + 1) * sg_n + 1, mask=nxt, other=0.0).to(tl.float64)
    c = b * b
    mr = c * (hr * hr - hi * hi)
    mi = c * (2.0 * hr * hi)
    return wr, wi, mr, mi


@triton.jit
def _bwd_maps(g_ptr, b_ptr, w_ptr, agg_ptr, S, N, L, K, sg_s, sg_n, sb_s, sb_n,
              BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    k = tl.program_id(1)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    hr = tl.zeros([BLOCK_S], dtype=tl.float64)
    hi = tl.zeros([BLOCK_S], dtype=tl.float64)
    pr = hr + 1.0
    pi = tl.zeros([BLOCK_S], dtype=tl.float64)
    for j0 in range(0, L, UNROLL):
        for jj in tl.static_range(UNROLL):
            i = s64 * 0 + (k * L + (L - 1 - j0 - jj))  # int64, as in the forward
            ok = live & (i < N)
            wr, wi, mr, mi = _bwd_step_inputs(g_ptr, b_ptr, w_ptr, s64, i, N, ok, sg_s, sg_n, sb_s, sb_n)
            hr, hi = wr + mr * hr - mi * hi, wi + mr * hi + mi * hr
            pr, pi = mr * pr - mi * pi, mr * pi + mi * pr
    base = agg_ptr + k * S + s64
    plane = K * S
    tl.store(base + 0 * plane, hr, mask=live)
    tl.store(base + 1 * plane, hi, mask=live)
    tl.store(base + 2 * plane, pr, mask=live)
    tl.store(base + 3 * plane, pi, mask=live)


@triton.jit
def _bwd_carry(agg_ptr, carry_ptr, S, K, BLOCK_S: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    plane = K * S
    xr = tl.zeros([BLOCK_S], dtype=tl.float64)
    xi = tl.zeros([BLOCK_S], dtype=tl.float64)
    for kk in range(0, K):
        k = K - 1 - kk
        tl.store(carry_ptr + k * S + s64, xr, mask=live)
        tl.store(carry_ptr + plane + k * S + s64, xi, mask=live)
        base = agg_ptr + k * S + s64
        hr = tl.load(base + 0 * plane, mask=live, other=0.0)
        hi = tl.load(base + 1 * plane, mask=live, other=0.0)
        pr = tl.load(base + 2 * plane, mask=live, other=0.0)
        pi = tl.load(base + 3 * plane, mask=live, other=0.0)
        xr, xi = hr + pr * xr - pi * xi, hi + pr * xi + pi * xr


@triton.jit
def _bwd_apply(g_ptr, b_ptr, w_ptr, carry_ptr, out_ptr, S, N, L, K, sg_s, sg_n, sb_s, sb_n, so_s, so_n,
               BLOCK_S: tl.constexpr, UNROLL: tl.constexpr):
    k = tl.program_id(1)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = s < S
    s64 = s.to(tl.int64)
    lr = tl.load(carry_ptr + k * S + s64, mask=live, other=0.0)
    li = tl.load(carry_ptr + K * S + k * S + s64, mask=live, other=0.0)
    for j0 in range(0, L, UNROLL):
        for jj in tl.static_range(UNROLL):
            i = s64 * 0 + (k * L + (L - 1 - j0 - jj))  # int64, as in the forward
            ok = live & (i < N)
            wr, wi, mr, mi = _bwd_step_inputs(g_ptr, b_ptr, w_ptr, s64, i, N, ok, sg_s, sg_n, sb_s, sb_n)
            lr, li = wr + mr * lr - mi * li, wi + mr * li + mi * lr
            gr = tl.load(g_ptr + s64 * sg_s + i * sg_n, mask=ok, other=0.0).to(tl.float64)
            gi = tl.load(g_ptr + s64 * sg_s + i * sg_n + 1, mask=ok, other=0.0).to(tl.float64)
            qr = gr * gr - gi * gi
            qi = 2.0 * gr * gi
            o = out_ptr + s64 * so_s + i * so_n
            tl.store(o, (-(lr * qr - li * qi)).to(out_ptr.dtype.element_ty), mask=ok)
            tl.store(o + 1, (-(lr * qi + li * qr)).to(out_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- launchers
def _real_dtype(out_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if out_dtype == torch.complex64 else torch.float64


def _arrange(x: torch.Tensor, positions_major: bool) -> tuple[torch.Tensor, int, int]:
    """``x`` ([S, M] or [S, M, 2]) in the kernels' layout, and its (system, position) strides
    in elements; positions-major copies it to [M, S(, 2)]."""
    if positions_major:
        x = x.transpose(0, 1).contiguous()
        return x, x.stride(1), x.stride(0)
    x = x.contiguous()
    return x, x.stride(0), x.stride(1)


def _output(s: int, n: int, dtype: torch.dtype, device, positions_major: bool) -> tuple[torch.Tensor, int, int]:
    """An empty [S, N, 2] output (as a view, [N, S, 2] underneath when positions-major) and its strides."""
    if positions_major:
        out = torch.empty((n, s, 2), dtype=dtype, device=device).transpose(0, 1)
    else:
        out = torch.empty((s, n, 2), dtype=dtype, device=device)
    return out, out.stride(0), out.stride(1)


def causal_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    zr: torch.Tensor,
    zi: torch.Tensor,
    out_dtype: torch.dtype = torch.complex64,
    chunk: int | None = None,
) -> torch.Tensor:
    """``g`` (``out_dtype`` ``[S, N]``) from ``a [S, N]``, ``b [S, N-1]``, ``zr, zi [S]``."""
    s, n = a.shape
    positions_major = layout() == "positions"
    if n == 1:  # no couplings: give the kernels a real (never read) pointer
        b = a.new_zeros((s, 1))
    (a, sa_s, sa_n), (b, sb_s, sb_n) = _arrange(a, positions_major), _arrange(b, positions_major)
    zr, zi = zr.contiguous(), zi.contiguous()
    length = chunk or chunk_length(n)
    if length % UNROLL:
        raise ValueError(f"chunk length must be a multiple of {UNROLL}, got {length}")
    k = triton.cdiv(n, length)
    block = _block_systems(s, positions_major)
    warps = max(1, block // 32)
    maps = torch.empty((8, k, s), dtype=torch.float64, device=a.device)
    carry = torch.empty((2, k, s), dtype=torch.float64, device=a.device)
    out, so_s, so_n = _output(s, n, _real_dtype(out_dtype), a.device, positions_major)
    grid = (triton.cdiv(s, block), k)
    _fwd_maps[grid](a, b, zr, zi, maps, s, n, length, k, sa_s, sa_n, sb_s, sb_n,
                    BLOCK_S=block, UNROLL=UNROLL, num_warps=warps)
    _fwd_carry[(grid[0],)](maps, carry, s, k, BLOCK_S=block, num_warps=warps)
    _fwd_apply[grid](a, b, zr, zi, carry, out, s, n, length, k, sa_s, sa_n, sb_s, sb_n, so_s, so_n,
                     BLOCK_S=block, UNROLL=UNROLL, num_warps=warps)
    return torch.view_as_complex(out.contiguous())


def causal_backward(
    g: torch.Tensor,
    b: torch.Tensor,
    w: torch.Tensor,
    out_dtype: torch.dtype = torch.complex64,
    chunk: int | None = None,
) -> torch.Tensor:
    """``Lambda = dL/dd`` (``out_dtype`` ``[S, N]``) given ``g [S, N]``, ``b [S, N-1]`` and
    ``w = conj(grad_g)``."""
    s, n = g.shape
    positions_major = layout() == "positions"
    g = torch.view_as_real(g.resolve_conj())
    w = torch.view_as_real(w.resolve_conj().to(torch.view_as_complex(g).dtype))
    (g, sg_s, sg_n), (w, _, _) = _arrange(g, positions_major), _arrange(w, positions_major)
    b = b if n > 1 else g.new_zeros((s, 1))
    b, sb_s, sb_n = _arrange(b, positions_major)
    length = chunk or chunk_length(n)
    if length % UNROLL:
        raise ValueError(f"chunk length must be a multiple of {UNROLL}, got {length}")
    k = triton.cdiv(n, length)
    block = _block_systems(s, positions_major)
    warps = max(1, block // 32)
    agg = torch.empty((4, k, s), dtype=torch.float64, device=g.device)
    carry = torch.empty((2, k, s), dtype=torch.float64, device=g.device)
    out, so_s, so_n = _output(s, n, _real_dtype(out_dtype), g.device, positions_major)
    grid = (triton.cdiv(s, block), k)
    _bwd_maps[grid](g, b, w, agg, s, n, length, k, sg_s, sg_n, sb_s, sb_n,
                    BLOCK_S=block, UNROLL=UNROLL, num_warps=warps)
    _bwd_carry[(grid[0],)](agg, carry, s, k, BLOCK_S=block, num_warps=warps)
    _bwd_apply[grid](g, b, w, carry, out, s, n, length, k, sg_s, sg_n, sb_s, sb_n, so_s, so_n,
                     BLOCK_S=block, UNROLL=UNROLL, num_warps=warps)
    return torch.view_as_complex(out.contiguous())
