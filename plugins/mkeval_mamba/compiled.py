"""The selective scan's recurrence compiled for the CPU with numba, forward and backward.

Why hand-written: torch has no linear-recurrence op, and ``mamba_ssm``'s fused kernel is
CUDA only. Here the recurrence of ``scan.selective_scan_ref`` runs as written, one time step
at a time::

    h_t = exp(dt_t A) h_{t-1} + (dt_t u_t) B_t,    y_t = C_t . h_t + D u_t,    out_t = y_t silu(z_t)

**Layout.** Channels are independent, so the kernels work on a block of ``LANES`` channels
side by side: every loop over a block's channels (its "lanes") is a vector loop of known
length, with no sum across lanes except dB's and dC's. Inputs and results are (batch, L,
channels), the layout of the mixer's projections (stored "lanes-last"), so dt, z and the incoming
gradient need no copy and the scan's results none on the way to ``out_proj``. (An earlier
kernel vectorised over the ``d_state`` states of one channel: with 16 states its loops were
too short, and its backward took 4.3x its forward; this one takes about 2x.)

**Forward** does ``D u`` and the gate too, and records the state entering each chunk of ``T``
steps (``enter``). **Backward**, chunk by chunk from the end, recomputes the chunk's states and
decays from its entering state (into ``(T + 1) x states x LANES`` buffers, as ``mamba_ssm``'s
kernel recomputes instead of storing) and runs the adjoint ``g_t = C_t dy_t + exp(dt_{t+1} A)
g_{t+1}`` through it, with the gate's, ``D``'s, softplus's and the bias's gradients; the
caller only recomputes dt (bias and softplus) in torch.

What it takes for the compiler to vectorise (measured here: 1.5x on the scan's backward,
3.5-6x on the convolution's kernels): rows are sliced before they are indexed (``x[b, t,
d0:d0 + W]``, then ``row[l]``: an index computed from ``d0`` is checked for negative
wraparound at every access, which stops vectorisation); ``error_model="numpy"`` (Python's
error model checks every float division for zero, a branch in the loop); and a block's values
are copied into the kernel's own arrays, so that its vector loops need few run-time overlap
checks against the arguments.

``exp`` is evaluated by ``_exp``, a vectorisable exponential (range reduction by ln 2 and a
Taylor polynomial; within 1 ulp of the correctly rounded value, tested): libm's scalar
``exp``, the only one numba offers without Intel's SVML, took 75% of an earlier forward (4.1
against 0.8 ns per state and step, float32, here). Sums over states and channels may be
reassociated (``fastmath``), so they differ from the reference in the last bits; every
operation reads only steps ``<= t``, so outputs stay causal bit for bit. dB's and dC's sums
over channels go to one slot per group of blocks (at most ``CHANNEL_GROUPS``, fixed by the
channel count, not by the threads) and each slot is summed in a fixed order, so results do
not depend on the thread count.

Work is shared among ``torch.get_num_threads()`` threads (``mkeval.threads.share_work``:
pieces claimed one at a time, so a core taken by another process does not stall the scan).
Kernels compile on first use and are cached on disk (``cache=True``).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from mkeval.threads import share_work

LANES = 64  # channels side by side in the kernels' vectorised loops (a block)
CHANNEL_GROUPS = 4  # at most: slots for the sums over channels in backward (dB, dC), one per group of blocks
PARALLEL_MIN_WORK = 1 << 22  # (batch x channels x L x states) below which one thread runs the kernel
PIECES_PER_THREAD = 4
_FASTMATH = {"reassoc", "contract", "nsz"}  # sums over states reassociated (vectorised); no nnan / ninf


# --------------------------------------------------------------------------- exp
@intrinsic
def _f32_bits(typingctx, bits):
    """An int32 reinterpreted as float32 (the exponent field of 2^k)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _f64_bits(typingctx, bits):
    """An int64 reinterpreted as float64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# Cody-Waite split of ln 2 (Cephes expf, fdlibm exp): k ln2_hi is exact for the k in range.
_LN2_HI_32, _LN2_LO_32 = np.float32(0.693359375), np.float32(-2.12194440e-4)
_LN2_HI_64, _LN2_LO_64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_INV_FACT_32 = tuple(np.float32(1 / math.factorial(i)) for i in range(8))
_INV_FACT_64 = tuple(1 / math.factorial(i) for i in range(14))


@numba.njit(cache=True, fastmath={"contract"})
def _exp32(x):  # pragma: no cover - compiled
    # x = k ln 2 + r, |r| <= ln2 / 2; exp(r) by its Taylor series to r^7 (error < 2 ulp);
    # 2^k as two factors 2^(k/2) 2^(k - k/2), so results down to float32's subnormals and up to
    # its overflow come out of ordinary multiplications. Clamping first keeps k in range.
    xc = min(max(x, np.float32(-104.0)), np.float32(89.0))
    k = np.floor(xc * np.float32(1.44269504) + np.float32(0.5))
    r = (xc - k * _LN2_HI_32) - k * _LN2_LO_32
    f = _INV_FACT_32
    p = ((((((f[7] * r + f[6]) * r + f[5]) * r + f[4]) * r + f[3]) * r + f[2]) * r + f[1]) * r + f[0]
    ki = np.int32(k)
    half = ki >> np.int32(1)
    v = p * _f32_bits((half + np.int32(127)) << np.int32(23)) * _f32_bits((ki - half + np.int32(127)) << np.int32(23))
    return v if x == x else x  # NaN stays NaN


@numba.njit(cache=True, fastmath={"contract"})
def _exp64(x):  # pragma: no cover - compiled
    # as _exp32, with the series to r^13
    xc = min(max(x, -746.0), 710.0)
    k = np.floor(xc * 1.4426950408889634 + 0.5)
    r = (xc - k * _LN2_HI_64) - k * _LN2_LO_64
    f = _INV_FACT_64
    p = f[13]
    for i in range(12, -1, -1):
        p = p * r + f[i]
    ki = np.int64(k)
    half = ki >> np.int64(1)
    v = p * _f64_bits((half + np.int64(1023)) << np.int64(52)) * _f64_bits((ki - half + np.int64(1023)) << np.int64(52))
    return v if x == x else x


def _exp(x):
    """``exp`` for float32 and float64 inside the kernels (see the module docstring)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)
    return None


@numba.njit(cache=True)
def exp_values(x, out):  # pragma: no cover - compiled
    """``_exp`` of every element of 1-D ``x`` into ``out`` (for its tests)."""
    for i in range(x.shape[0]):
        out[i] = _exp(x[i])


# --------------------------------------------------------------------------- kernels
@functools.cache
def kernels(n_states: int):
    """``(forward_blocks, backward_groups)`` for ``n_states`` states. The state count and the block
    width ``LANES`` are compile-time constants (numba caches one kernel per count), so the loops
    over a block's channels have a known length and vectorise whole."""
    N, W = n_states, LANES

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def forward_blocks(dt, u, At, Bt, Ct, Dv, z, T, out, y, enter, start, stop):  # pragma: no cover - compiled
        """Blocks ``start..stop-1`` (block = b * blocks per row + i: channels ``i W .. i W + W - 1`` of
        batch row b): ``out`` (and, with z, ``y``) and ``enter``, the state entering each chunk of
        ``T`` steps. Inputs are (batch, L, channels) but ``At`` (states, channels) and ``Bt, Ct``
        (batch, L, states); ``Dv`` and ``z`` may be empty (absent)."""
        n_b, L, dp = dt.shape
        n_blk = dp // W
        has_D, has_z = Dv.shape[0] > 0, z.shape[0] > 0
        one = dt.dtype.type(1.0)
        # the block's values in arrays of the kernel's own, so that the vectorised loops read few
        # argument arrays (fewer run-time overlap checks)
        h = np.empty((N, W), dtype=dt.dtype)
        a_blk = np.empty((N, W), dtype=dt.dtype)
        s, x, acc = np.empty(W, dtype=dt.dtype), np.empty(W, dtype=dt.dtype), np.empty(W, dtype=dt.dtype)
        for item in range(start, stop):
            bi, d0 = item // n_blk, (item % n_blk) * W
            for k in range(N):
                ar = At[k, d0:d0 + W]
                for l in range(W):
                    a_blk[k, l] = ar[l]
                    h[k, l] = 0.0
            for t in range(L):
                if t % T == 0:
                    ent = enter[t // T, bi, d0:d0 + W]
                    for l in range(W):
                        for k in range(N):
                            ent[l, k] = h[k, l]
                # rows are sliced before indexing: an index computed from the block's start
                # would be checked for wraparound at each access, which stops vectorisation
                dr, ur = dt[bi, t, d0:d0 + W], u[bi, t, d0:d0 + W]
                for l in range(W):
                    s[l] = dr[l]
                    x[l] = s[l] * ur[l]
                    acc[l] = 0.0
                br, cr = Bt[bi, t], Ct[bi, t]
                for k in range(N):
                    bk, ck = br[k], cr[k]
                    for l in range(W):
                        hk = _exp(s[l] * a_blk[k, l]) * h[k, l] + x[l] * bk
                        h[k, l] = hk
                        acc[l] += ck * hk
                if has_D:
                    Dr = Dv[d0:d0 + W]
                    for l in range(W):
                        acc[l] += Dr[l] * ur[l]
                orow = out[bi, t, d0:d0 + W]
                if has_z:  # out = y silu(z) = y z / (1 + exp(-z))
                    zr, yr = z[bi, t, d0:d0 + W], y[bi, t, d0:d0 + W]
                    for l in range(W):
                        yr[l] = acc[l]
                        orow[l] = acc[l] * zr[l] / (one + _exp(-zr[l]))
                else:
                    for l in range(W):
                        orow[l] = acc[l]

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
    def backward_groups(dt, delta, u, At, Bt, Ct, Dv, z, y, dout, enter, T, softplus,
                        du, ddelta, dz, dA, dB, dC, dD, dbias, start, stop):  # pragma: no cover - compiled
        """Gradients for items ``start..stop-1``, item = b * groups + group; a group is a run of
        blocks (``dB.shape[0]`` groups per batch row). Layouts as in ``forward_blocks``; ``delta``:
        dt before softplus (bias added); ``dout``: the gradient of ``out``. Writes ``du, ddelta,
        dz``; ``dA`` (batch, channels, states), ``dD, dbias`` (batch, channels), summed over batch
        by the caller; ``dB, dC`` (groups, batch, L, states), zero on entry, summed over groups by the
        caller (a group's blocks add their sums over channels to its slot in turn)."""
        n_b, L, dp = dt.shape
        n_blk = dp // W
        G = dB.shape[0]
        has_D, has_z = Dv.shape[0] > 0, z.shape[0] > 0
        n_chunks = (L + T - 1) // T
        zero, one, big = dt.dtype.type(0.0), dt.dtype.type(1.0), dt.dtype.type(20.0)
        H = np.empty((T + 1, N, W), dtype=dt.dtype)  # H[0]: state entering the chunk, H[j + 1]: h at t0 + j
        E = np.empty((T, N, W), dtype=dt.dtype)  # decays exp(dt A) of the chunk's steps
        S, X, GY = np.empty((T, W), dtype=dt.dtype), np.empty((T, W), dtype=dt.dtype), np.empty((T, W), dtype=dt.dtype)
        a_blk = np.empty((N, W), dtype=dt.dtype)
        D_blk = np.zeros(W, dtype=dt.dtype)
        gdtu, gdt = np.empty(W, dtype=dt.dtype), np.empty(W, dtype=dt.dtype)
        for item in range(start, stop):
            bi, grp = item // G, item % G
            b0, b1 = grp * n_blk // G, (grp + 1) * n_blk // G
            nb = b1 - b0
            g = np.zeros((nb, N, W), dtype=dt.dtype)  # adjoint dL/dh at the step after the chunk
            nxt = np.zeros((nb, N, W), dtype=dt.dtype)  # the decay of that step (0 past the end)
            ga_sum = np.zeros((nb, N, W), dtype=dt.dtype)
            sD, sbias = np.zeros((nb, W), dtype=dt.dtype), np.zeros((nb, W), dtype=dt.dtype)
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * T
                nt = min(L, t0 + T) - t0
                for bl in range(nb):
                    d0 = (b0 + bl) * W
                    gb, nb_, gab = g[bl], nxt[bl], ga_sum[bl]
                    for k in range(N):
                        ar = At[k, d0:d0 + W]
                        for l in range(W):
                            a_blk[k, l] = ar[l]
                    if has_D:
                        Dr = Dv[d0:d0 + W]
                        for l in range(W):
                            D_blk[l] = Dr[l]
                    # gather the chunk's steps; through the gate and D u: dL/dy, dL/dz, dL/dD
                    for j in range(nt):
                        t = t0 + j
                        dr, ur, gr = dt[bi, t, d0:d0 + W], u[bi, t, d0:d0 + W], dout[bi, t, d0:d0 + W]
                        for l in range(W):
                            S[j, l] = dr[l]
                            X[j, l] = dr[l] * ur[l]
                            GY[j, l] = gr[l]
                        if has_z:
                            zr, yr, dzr = z[bi, t, d0:d0 + W], y[bi, t, d0:d0 + W], dz[bi, t, d0:d0 + W]
                            for l in range(W):
                                zl = zr[l]
                                sig = one / (one + _exp(-zl))
                                gy = GY[j, l]
                                dzr[l] = gy * yr[l] * sig * (one + zl * (one - sig))
                                GY[j, l] = gy * zl * sig
                        if has_D:
                            for l in range(W):
                                sD[bl, l] += GY[j, l] * ur[l]
                    # recompute the chunk's states from the one entering it
                    ent = enter[c, bi, d0:d0 + W]
                    for l in range(W):
                        for k in range(N):
                            H[0, k, l] = ent[l, k]
                    for j in range(nt):
                        br = Bt[bi, t0 + j]
                        for k in range(N):
                            bk = br[k]
                            for l in range(W):
                                a = _exp(S[j, l] * a_blk[k, l])
                                E[j, k, l] = a
                                H[j + 1, k, l] = a * H[j, k, l] + X[j, l] * bk
                    # the adjoint g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}, backwards through the chunk
                    for j in range(nt - 1, -1, -1):
                        t = t0 + j
                        for l in range(W):
                            gdtu[l] = 0.0
                            gdt[l] = 0.0
                        br, cr = Bt[bi, t], Ct[bi, t]
                        dcr, dbr = dC[grp, bi, t], dB[grp, bi, t]
                        for k in range(N):
                            ck, bk = cr[k], br[k]
                            sc, sb = zero, zero
                            for l in range(W):
                                gg = GY[j, l] * ck + nb_[k, l] * gb[k, l]  # dL/dh_t, via y_t and h_{t+1}
                                gb[k, l] = gg
                                sc += H[j + 1, k, l] * GY[j, l]
                                sb += gg * X[j, l]
                                gdtu[l] += gg * bk
                                ga = gg * H[j, k, l] * E[j, k, l]  # dL/d(dt A)_t
                                gab[k, l] += ga * S[j, l]
                                gdt[l] += ga * a_blk[k, l]
                                nb_[k, l] = E[j, k, l]
                            dcr[k] += sc
                            dbr[k] += sb
                        # du, and through softplus (its derivative is sigmoid, and 1 where
                        # F.softplus is linear, x > 20) and the bias
                        ur, dur, ddr = u[bi, t, d0:d0 + W], du[bi, t, d0:d0 + W], ddelta[bi, t, d0:d0 + W]
                        for l in range(W):
                            dur[l] = gdtu[l] * S[j, l] + GY[j, l] * D_blk[l]
                            ddr[l] = gdt[l] + gdtu[l] * ur[l]
                        if softplus:
                            xr = delta[bi, t, d0:d0 + W]
                            for l in range(W):
                                xl = xr[l]
                                sg = one / (one + _exp(-xl))
                                ddr[l] = ddr[l] * sg if xl <= big else ddr[l]
                        for l in range(W):
                            sbias[bl, l] += ddr[l]
            for bl in range(nb):
                d0 = (b0 + bl) * W
                dAr, dDr, dbr = dA[bi, d0:d0 + W], dD[bi, d0:d0 + W], dbias[bi, d0:d0 + W]
                for l in range(W):
                    for k in range(N):
                        dAr[l, k] = ga_sum[bl, k, l]
                    dDr[l] = sD[bl, l]
                    dbr[l] = sbias[bl, l]

    return forward_blocks, backward_groups


# --------------------------------------------------------------------------- launchers
def _share(kernel, n_items: int, work: int, *args) -> None:
    threads = max(1, torch.get_num_threads())
    if work < PARALLEL_MIN_WORK or threads < 2:
        kernel(*args, 0, n_items)
        return
    piece = -(-n_items // (threads * PIECES_PER_THREAD))
    share_work(lambda start, stop: kernel(*args, start, stop), n_items, threads, piece)


def padded(d: int) -> int:
    """Channels rounded up to whole blocks of ``LANES``."""
    return -(-d // LANES) * LANES


def _lanes(t: torch.Tensor | None, ct: torch.dtype, dp: int) -> np.ndarray:
    """(batch, channels, L) -> C-contiguous (batch, L, dp) in ``ct``, channels zero-padded to ``dp``;
    no copy when ``t`` is already stored so (as the mixer's x, dt, z and incoming gradient are)."""
    if t is None:
        return torch.empty((0, 0, 0), dtype=ct).numpy()
    tl = t.detach().transpose(1, 2).to(ct)
    if tl.shape[2] == dp and tl.is_contiguous():
        return tl.numpy()
    buf = torch.zeros((tl.shape[0], tl.shape[1], dp), dtype=ct)
    buf[:, :, : tl.shape[2]] = tl
    return buf.numpy()


def _channels(t: torch.Tensor | None, ct: torch.dtype, dp: int, ndim: int = 1) -> np.ndarray:
    """A per-channel tensor (channels first: D, or A transposed) zero-padded to ``dp`` channels."""
    if t is None:
        return torch.empty((0,) * ndim, dtype=ct).numpy()
    t = t.detach().to(ct)
    out = torch.zeros((*t.shape[:-1], dp), dtype=ct)
    out[..., : t.shape[-1]] = t
    return out.numpy()


def _rows(t: torch.Tensor, ct: torch.dtype) -> np.ndarray:
    """(batch, states, L) -> C-contiguous (batch, L, states): a step's states side by side."""
    tl = t.detach().transpose(1, 2).to(ct)
    return (tl if tl.is_contiguous() else tl.contiguous()).numpy()


def _result(buf: torch.Tensor, d: int) -> torch.Tensor:
    """A (batch, L, dp) kernel result as the (batch, d, L) tensor, stored lanes-last."""
    if buf.shape[2] != d:
        buf = buf[:, :, :d].contiguous()
    return buf.transpose(1, 2)


def forward(dt, u, A, B, C, D, z, chunk: int):
    """``(out, enter, y)`` in ``dt``'s (compute) dtype: the scan's output (batch, channels, L), the
    state entering each chunk of ``chunk`` steps, (chunks, batch * channels * states), and (with
    ``z``; else None) the output before the gate. ``dt`` is the step (bias and softplus applied); B
    and C are (batch, states, L). Results are (batch, ·, L) tensors stored as (batch, L, ·)."""
    ct = dt.dtype
    b, d, L = dt.shape
    n = A.shape[1]
    dp = padded(d)
    n_chunks = -(-L // chunk)
    out = torch.empty((b, L, dp), dtype=ct)
    y = torch.empty((b, L, dp) if z is not None else (0, 0, 0), dtype=ct)
    enter = torch.empty((n_chunks, b, dp, n), dtype=ct)
    args = (_lanes(dt, ct, dp), _lanes(u, ct, dp), _channels(A.t(), ct, dp, 2), _rows(B, ct), _rows(C, ct),
            _channels(D, ct, dp), _lanes(z, ct, dp), chunk, out.numpy(), y.numpy(), enter.numpy())
    _share(kernels(n)[0], b * (dp // LANES), b * dp * L * n, *args)
    if dp != d:
        enter = enter[:, :, :d].contiguous()
    return _result(out, d), enter.view(n_chunks, b * d * n), (_result(y, d) if z is not None else None)


def backward(dt, delta, softplus: bool, u, A, B, C, D, z, y, dout, enter, chunk: int):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, dbias)`` of ``sum(dout * out)`` through
    ``forward``, in ``dt``'s dtype; ``delta`` is dt before softplus; dD and dz are None when D and
    z are. Tensors of the inputs' shapes are stored lanes-last, as ``forward``'s results."""
    ct = dt.dtype
    b, d, L = dt.shape
    n = A.shape[1]
    dp = padded(d)
    groups = min(CHANNEL_GROUPS, dp // LANES)
    new = lambda *shape: torch.empty(shape, dtype=ct)  # noqa: E731
    du, ddelta = new(b, L, dp), new(b, L, dp)
    dz = new(b, L, dp) if z is not None else new(0, 0, 0)
    dA, dD, dbias = new(b, dp, n), new(b, dp), new(b, dp)
    dB, dC = torch.zeros((groups, b, L, n), dtype=ct), torch.zeros((groups, b, L, n), dtype=ct)
    ent = enter.view(-1, b, d, n).to(ct)
    if dp != d:
        ent = torch.nn.functional.pad(ent, (0, 0, 0, dp - d))
    args = (_lanes(dt, ct, dp), _lanes(delta, ct, dp), _lanes(u, ct, dp), _channels(A.t(), ct, dp, 2), _rows(B, ct),
            _rows(C, ct), _channels(D, ct, dp), _lanes(z, ct, dp), _lanes(y if z is not None else None, ct, dp),
            _lanes(dout, ct, dp), ent.contiguous().numpy(), chunk, softplus,
            du.numpy(), ddelta.numpy(), dz.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dbias.numpy())
    _share(kernels(n)[1], b * groups, b * dp * L * n, *args)
    return (_result(du, d), _result(ddelta, d), dA.sum(0)[:d], dB.sum(0).transpose(1, 2), dC.sum(0).transpose(1, 2),
            dD.sum(0)[:d] if D is not None else None, _result(dz, d) if z is not None else None, dbias.sum(0)[:d])
