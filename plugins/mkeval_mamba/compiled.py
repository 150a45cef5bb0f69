"""The selective scan's recurrence compiled for the CPU with numba, forward and backward.

Why hand-written: torch has no linear-recurrence op, and ``mamba_ssm``'s fused kernel is
CUDA only. Here the recurrence of ``scan.selective_scan_ref`` runs as written, one time step
at a time per (batch, channel), with the ``d_state`` states of a step as one vector::

    h_t = exp(dt_t A) h_{t-1} + (dt_t u_t) B_t,    y_t = C_t . h_t

The forward leaves the elementwise work around the recurrence to the caller (``scan.py``:
dt's bias and softplus, ``D u``, the ``silu(z)`` gate), which torch's vectorised ops do
faster than scalar code here, since u and z are read along time with a stride. The backward
does the gate's, ``D``'s, softplus's and the bias's gradients itself, a chunk of one channel
at a time (gathered, then vectorised); the caller only recomputes dt (bias and softplus) in torch.

Time is cut into chunks of ``T`` steps, and the loops run chunk by chunk over a piece of
channels, so a chunk's ``B`` and ``C`` stay in cache while every channel of the piece uses
them. Forward records the state entering each chunk (``enter``); backward, chunk by chunk
from the end, recomputes the chunk's states and decays from its entering state (into a
``(T + 1) x states`` buffer, as ``mamba_ssm``'s kernel recomputes instead of storing) and
runs the adjoint ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` through it.

``exp`` is evaluated by ``_exp``, a vectorisable exponential (range reduction by ln 2 and a
Taylor polynomial; within 1 ulp of the correctly rounded value, tested): libm's scalar
``exp``, the only one numba offers without Intel's SVML, took 75% of the forward (4.1
against 0.8 ns per state and step, float32, here). The state sums ``C_t . h_t`` may be
reassociated (``fastmath``), so they differ from the reference in the last bits; every
operation reads only steps ``<= t``, so outputs stay causal bit for bit. Channel-group sums
(``dB``, ``dC``) go to one slot per group, fixed by ``CHANNEL_GROUPS`` and not by the thread
count, so results do not depend on the threads.

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

CHANNEL_GROUPS = 4  # slots for the sums over channels in backward (dB, dC): one per group, 4x B's size
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
    """``(forward_pairs, backward_items)`` for ``n_states`` states. In the forward the state count
    is a compile-time constant (numba caches one kernel per count), so its loop over the states
    has a known length and the compiler unrolls and vectorises it whole (25-40% faster at 16
    states, measured); the backward's loops were faster with the run-time count."""
    N = n_states

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
    def forward_pairs(dt, u, A, Bt, Ct, T, ys, enter, start, stop):  # pragma: no cover - compiled
        """``ys = C . h`` for (batch, channel) pairs ``start..stop-1`` (pair = b * channels + d), and
        ``enter``, the state entering each chunk of ``T`` steps. Chunk by chunk over all the pairs,
        so that a chunk's B and C stay in cache while every channel uses them (at L = 16384 this
        order was 15% faster than channel by channel, measured; at L = 1024 they were level)."""
        n_b, n_d, L = dt.shape
        h = np.zeros((stop - start, N), dtype=dt.dtype)
        for c in range((L + T - 1) // T):
            t0 = c * T
            t1 = min(L, t0 + T)
            for p in range(start, stop):
                bi, di, q = p // n_d, p % n_d, p - start
                enter[c, bi, di, :] = h[q]
                for t in range(t0, t1):
                    step = dt[bi, di, t]
                    x = step * u[bi, di, t]
                    acc = dt.dtype.type(0.0)
                    for k in range(N):
                        hk = _exp(step * A[di, k]) * h[q, k] + x * Bt[bi, t, k]
                        h[q, k] = hk
                        acc += Ct[bi, t, k] * hk
                    ys[bi, di, t] = acc

    @numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
    def backward_items(dt, delta, u, A, Bt, Ct, D, z, y, dout, enter, T, softplus,
                        du, ddelta, dz, dA, dB, dC, dD, dbias, start, stop):  # pragma: no cover - compiled
        """Gradients for items ``start..stop-1``, item = b * CHANNEL_GROUPS + group.

        ``delta``: dt before softplus (bias added); ``dout``: the gradient of ``out``. Writes
        ``du, ddelta, dz`` (batch, channels, L); ``dA`` (batch, channels, states), ``dD, dbias``
        (batch, channels), summed over batch by the caller; ``dB, dC`` (CHANNEL_GROUPS, batch, L,
        states), summed over groups by the caller.
        """
        n_b, n_d, L = dt.shape
        Nr = A.shape[1]  # a run-time count: with the constant, the backward ran 30% slower (measured)
        has_D, has_z = D.shape[0] > 0, z.shape[0] > 0
        n_chunks = (L + T - 1) // T
        per = (n_d + CHANNEL_GROUPS - 1) // CHANNEL_GROUPS
        H = np.empty((T + 1, Nr), dtype=dt.dtype)  # H[0]: state entering the chunk, H[j + 1]: h at t0 + j
        E = np.empty((T, Nr), dtype=dt.dtype)  # decays exp(dt A) of the chunk's steps
        # one channel's values over the chunk's steps, gathered (u, z, ... are read along time,
        # strided) so that the elementwise passes over them vectorise, exp included
        DT, U, DL = np.empty(T, dtype=dt.dtype), np.empty(T, dtype=dt.dtype), np.empty(T, dtype=dt.dtype)
        GY, W = np.empty(T, dtype=dt.dtype), np.empty(T, dtype=dt.dtype)
        GU, GD = np.empty(T, dtype=dt.dtype), np.empty(T, dtype=dt.dtype)
        one = dt.dtype.type(1.0)
        for item in range(start, stop):
            bi, grp = item // CHANNEL_GROUPS, item % CHANNEL_GROUPS
            d0, d1 = grp * per, min(n_d, (grp + 1) * per)
            if d0 >= d1:
                continue
            g = np.zeros((d1 - d0, Nr), dtype=dt.dtype)  # adjoint dL/dh at the step after the chunk
            nxt = np.zeros((d1 - d0, Nr), dtype=dt.dtype)  # the decay of that step (0 past the end)
            ga_sum = np.zeros((d1 - d0, Nr), dtype=dt.dtype)
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * T
                t1 = min(L, t0 + T)
                for di in range(d0, d1):
                    ci = di - d0
                    nt = t1 - t0
                    for j in range(nt):
                        DT[j] = dt[bi, di, t0 + j]
                        U[j] = u[bi, di, t0 + j]
                        GY[j] = dout[bi, di, t0 + j]
                    # through the gate and D u: dL/dy, dL/dz, dL/dD
                    if has_z:
                        for j in range(nt):
                            W[j] = z[bi, di, t0 + j]
                            DL[j] = y[bi, di, t0 + j]
                        for j in range(nt):
                            zt = W[j]
                            sig = one / (one + _exp(-zt))
                            W[j] = GY[j] * DL[j] * sig * (one + zt * (one - sig))  # dL/dz
                            GY[j] = GY[j] * zt * sig
                        for j in range(nt):
                            dz[bi, di, t0 + j] = W[j]
                    if has_D:
                        acc = dt.dtype.type(0.0)
                        for j in range(nt):
                            acc += GY[j] * U[j]
                        dD[bi, di] += acc
                    # recompute the chunk's states from the one entering it
                    H[0, :] = enter[c, bi, di, :]
                    for j in range(nt):
                        t = t0 + j
                        step = DT[j]
                        x = step * U[j]
                        for k in range(Nr):
                            a = _exp(step * A[di, k])
                            E[j, k] = a
                            H[j + 1, k] = a * H[j, k] + x * Bt[bi, t, k]
                    for j in range(nt - 1, -1, -1):
                        t = t0 + j
                        gy, step, ut = GY[j], DT[j], U[j]
                        x = step * ut
                        # four short loops over the states, not one: each has few enough arrays
                        # for the compiler to vectorise it
                        for k in range(Nr):
                            g[ci, k] = gy * Ct[bi, t, k] + nxt[ci, k] * g[ci, k]  # dL/dh_t, via y_t and h_{t+1}
                        for k in range(Nr):
                            dC[grp, bi, t, k] += H[j + 1, k] * gy
                            dB[grp, bi, t, k] += g[ci, k] * x
                        gdtu = dt.dtype.type(0.0)
                        for k in range(Nr):
                            gdtu += g[ci, k] * Bt[bi, t, k]
                        gdt = dt.dtype.type(0.0)
                        for k in range(Nr):
                            ga = g[ci, k] * H[j, k] * E[j, k]  # dL/d(dt A)_t
                            ga_sum[ci, k] += ga * step
                            gdt += ga * A[di, k]
                            nxt[ci, k] = E[j, k]
                        GU[j] = gdtu
                        GD[j] = gdt + gdtu * ut
                    # du, and through softplus and the bias: elementwise over the chunk
                    for j in range(nt):
                        GU[j] = GU[j] * DT[j]
                    if has_D:
                        for j in range(nt):
                            GU[j] += GY[j] * D[di]
                    for j in range(nt):
                        du[bi, di, t0 + j] = GU[j]
                    if softplus:  # softplus' = sigmoid, and 1 where F.softplus is linear (x > 20)
                        for j in range(nt):
                            DL[j] = delta[bi, di, t0 + j]
                        for j in range(nt):
                            xt = DL[j]
                            GD[j] = GD[j] * (one / (one + _exp(-xt))) if xt <= 20 else GD[j]
                    acc = dt.dtype.type(0.0)
                    for j in range(nt):
                        ddelta[bi, di, t0 + j] = GD[j]
                        acc += GD[j]
                    dbias[bi, di] += acc
            for di in range(d0, d1):
                dA[bi, di, :] = ga_sum[di - d0]

    return forward_pairs, backward_items


# --------------------------------------------------------------------------- launchers
def _share(kernel, n_items: int, work: int, *args) -> None:
    threads = max(1, torch.get_num_threads())
    if work < PARALLEL_MIN_WORK or threads < 2:
        kernel(*args, 0, n_items)
        return
    piece = -(-n_items // (threads * PIECES_PER_THREAD))
    share_work(lambda start, stop: kernel(*args, start, stop), n_items, threads, piece)


def _np(t: torch.Tensor | None, dtype: torch.dtype, ndim: int = 3) -> np.ndarray:
    """``t`` in ``dtype`` as a numpy array (any strides: the kernels index, they do not assume a
    layout), or an empty ``ndim``-d array for an absent input."""
    if t is None:
        return torch.empty((0,) * ndim, dtype=dtype).numpy()
    return t.detach().to(dtype).numpy()


def _rows(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """(batch, states, L) -> contiguous (batch, L, states): a step's states side by side."""
    return t.detach().to(dtype).transpose(1, 2).contiguous().numpy()


def forward(dt, u, A, B, C, chunk: int):
    """``(ys, enter)`` in ``dt``'s (compute) dtype: ``ys = C . h`` (batch, channels, L) and the state
    entering each chunk of ``chunk`` steps, (chunks, batch * channels * states). ``dt`` is the
    step (bias and softplus applied); B and C are (batch, states, L). ``D u`` and the gate are
    left to the caller: torch's vectorised elementwise ops do them several times faster than
    scalar code here, where u and z are read along time."""
    ct = dt.dtype
    b, d, L = dt.shape
    n = A.shape[1]
    n_chunks = -(-L // chunk)
    ys = torch.empty((b, d, L), dtype=ct)
    enter = torch.empty((n_chunks, b, d, n), dtype=ct)
    args = (_np(dt, ct), _np(u, ct), _np(A, ct), _rows(B, ct), _rows(C, ct), chunk, ys.numpy(), enter.numpy())
    _share(kernels(n)[0], b * d, b * d * L * n, *args)
    return ys, enter.view(n_chunks, b * d * n)


def backward(dt, delta, softplus: bool, u, A, B, C, D, z, y, dout, enter, chunk: int):
    """Gradients ``(du, ddelta, dA, dB, dC, dD, dz, dbias)`` of ``sum(dout * out)`` through
    ``forward``, in ``dt``'s dtype; ``delta`` is dt before softplus; dB and dC come as
    (batch, states, L), like B and C; dD and dz are None when D and z are."""
    ct = dt.dtype
    b, d, L = dt.shape
    n = A.shape[1]
    new = lambda *shape: torch.empty(shape, dtype=ct)  # noqa: E731
    du, ddelta = new(b, d, L), new(b, d, L)
    dz = new(b, d, L) if z is not None else new(0, 0, 0)
    dA = new(b, d, n)
    dD, dbias = torch.zeros((b, d), dtype=ct), torch.zeros((b, d), dtype=ct)
    dB = torch.zeros((CHANNEL_GROUPS, b, L, n), dtype=ct)
    dC = torch.zeros((CHANNEL_GROUPS, b, L, n), dtype=ct)
    args = (_np(dt, ct), _np(delta, ct), _np(u, ct), _np(A, ct), _rows(B, ct), _rows(C, ct), _np(D, ct, 1), _np(z, ct),
            _np(y if z is not None else None, ct), _np(dout, ct), _np(enter.view(-1, b, d, n), ct), chunk, softplus,
            du.numpy(), ddelta.numpy(), dz.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dbias.numpy())
    _share(kernels(n)[1], b * CHANNEL_GROUPS, b * d * L * n, *args)
    return (du, ddelta, dA.sum(0), dB.sum(0).transpose(1, 2), dC.sum(0).transpose(1, 2),
            dD.sum(0) if D is not None else None, dz if z is not None else None, dbias.sum(0))
