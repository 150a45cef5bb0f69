"""The BK recursion compiled for the CPU with numba: one sequential pass per system.

Why hand-written: no library has these recurrences (torch has no continued-fraction or
time-varying linear-recurrence op), and the chunked PyTorch scan (``cpu.py``) is bound by
its Python steps, not by arithmetic. Compiled, the recursion runs exactly as ``reference.py``
writes it, one position at a time, in float64 (complex numbers as (re, im) pairs):

forward   ``g_0 = 1 / d_0``, ``g_i = 1 / (d_i - c_{i-1} g_{i-1})``;
backward  ``lam_{N-1} = w_{N-1}``, ``lam_i = w_i + c_i g_{i+1}^2 lam_{i+1}``, ``Lambda_i = -lam_i g_i^2``.

Every output is produced by the sequential recursion itself, so output ``i`` reads positions
``<= i`` only (causal bit for bit) and the accuracy is the reference's.

Besides the backend interface of ``op.py`` (``causal_forward``, ``causal_backward``), two
fused entry points serve the causal op: ``op_forward`` reads the op's float32/float64 inputs
and writes its ``[..., N, 2]`` output directly, checking on the way that the inputs are
finite; ``op_backward`` goes from the output's gradient straight to the four input
gradients. So a causal call runs no PyTorch op over the ``S x N`` positions: each such op
is an OpenMP parallel region, and when another process keeps a core busy, every region
waits for the thread that lost its core (the 5-30x stall of the chunked scan).

When there is a lot of work, pieces of systems run on several threads through
``mkeval.threads.share_work`` (the kernels release the GIL); the thread count follows
``torch.get_num_threads()``, which the runner and the benchmarks set from
``mkeval.threads.choose_threads``. Kernels are compiled on first use and cached on disk
(``cache=True``: next to this file, or numba's per-user cache directory when that is not
writable), so a new process loads them instead of compiling them.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from mkeval.threads import share_work

__all__ = ["causal_backward", "causal_forward", "op_backward", "op_forward", "threads"]

# Four systems advance side by side, position by position, their states in scalar variables
# (registers): one system's recursion is a chain of dependent operations (a division, in the
# forward), so it is latency-bound; four independent chains fill the core's pipelines. Here
# that halved the time of both passes (forward 131 -> 62 us, backward 208 -> 113 us at
# S x N = 8 x 2048), against four systems interleaved through small arrays. Each system's
# arithmetic is the same sequence of operations either way, so the results are the same bits.
GROUP = 4
# Below this many positions (S x N), about 16 ms of work on one thread, the caller runs the
# kernel alone. A helper thread whose core another process keeps busy runs in bursts, with
# gaps of up to about 20 ms between them (measured here): a call that waits for one piece of
# work from such a thread stalls by that much, so only work far longer than the gap is shared
# (and then shared dynamically, so the busy thread takes fewer pieces).
PARALLEL_MIN_POSITIONS = 1 << 22
PIECES_PER_THREAD = 4


def threads() -> int:
    """Threads the kernels use: torch's intra-op setting (set from ``mkeval.threads.choose_threads``)."""
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------- one step
@numba.njit(inline="always")
def _fraction(a, c, zr, zi, gr, gi):  # pragma: no cover - compiled
    """g = 1 / (d - c g_prev) with d = a - z, as conj(x) / |x|^2 (|x| >= Im z > 0)."""
    xr = (a - zr) - c * gr
    xi = -zi - c * gi
    inv = 1.0 / (xr * xr + xi * xi)
    return xr * inv, -xi * inv


@numba.njit(inline="always")
def _forward_first(a, zr, zi, out, s):  # pragma: no cover - compiled
    g = _fraction(np.float64(a[s, 0]), 0.0, zr[s], zi[s], 0.0, 0.0)  # g_0 = 1 / d_0
    out[s, 0, 0], out[s, 0, 1] = g
    return g


@numba.njit(inline="always")
def _forward_at(a, b, zr, zi, out, s, i, g):  # pragma: no cover - compiled
    bb = np.float64(b[s, i - 1])
    g = _fraction(np.float64(a[s, i]), bb * bb, zr[s], zi[s], g[0], g[1])
    out[s, i, 0], out[s, i, 1] = g
    return g


@numba.njit(inline="always")
def _lambda(lr, li, er, ei):  # pragma: no cover - compiled
    """Lambda = -lam g^2."""
    qr = er * er - ei * ei
    qi = 2.0 * er * ei
    return -(lr * qr - li * qi), -(lr * qi + li * qr)


@numba.njit(inline="always")
def _backward_last(g, grad, g_diag, s, j):  # pragma: no cover - compiled
    """The state at j = N-1: lam = w = conj(grad); returns (lam, Lambda, g_j, sum of Lambda)."""
    er, ei = np.float64(g[s, j, 0]), np.float64(g[s, j, 1])
    lr, li = np.float64(grad[s, j, 0]), -np.float64(grad[s, j, 1])
    nr, ni = _lambda(lr, li, er, ei)
    g_diag[s, j] = nr
    return lr, li, nr, ni, er, ei, nr, ni


@numba.njit(inline="always")
def _backward_at(g, b, grad, g_diag, g_off, s, i, state):  # pragma: no cover - compiled
    """One step back, from i+1 to i: lam_i = w_i + c_i g_{i+1}^2 lam_{i+1}, Lambda_i = -lam_i g_i^2,
    grad diag_i = Re Lambda_i, grad off_i = 2 b_i Re(-Lambda_{i+1} g_i) (c_i enters only the
    denominator of g_{i+1})."""
    lr, li, nr, ni, hr, hi, sr, si = state  # lam, Lambda and g at i+1; sums of Lambda
    er, ei = np.float64(g[s, i, 0]), np.float64(g[s, i, 1])
    bb = np.float64(b[s, i])
    c = bb * bb
    g_off[s, i] = 2.0 * bb * -(nr * er - ni * ei)
    mr = c * (hr * hr - hi * hi)
    mi = c * (2.0 * hr * hi)
    pr = np.float64(grad[s, i, 0]) + (mr * lr - mi * li)  # w = conj(grad)
    pi = -np.float64(grad[s, i, 1]) + (mr * li + mi * lr)
    nr, ni = _lambda(pr, pi, er, ei)
    g_diag[s, i] = nr
    return pr, pi, nr, ni, er, ei, sr + nr, si + ni


@numba.njit(inline="always")
def _adjoint_at(g, b, w, out, s, i, state):  # pragma: no cover - compiled
    """``_backward_at`` for the backend interface: w given, Lambda written out."""
    lr, li, hr, hi = state
    er, ei = np.float64(g[s, i, 0]), np.float64(g[s, i, 1])
    pr, pi = np.float64(w[s, i, 0]), np.float64(w[s, i, 1])
    if i < g.shape[1] - 1:
        bb = np.float64(b[s, i])
        c = bb * bb
        mr = c * (hr * hr - hi * hi)
        mi = c * (2.0 * hr * hi)
        pr, pi = pr + (mr * lr - mi * li), pi + (mr * li + mi * lr)
    out[s, i, 0], out[s, i, 1] = _lambda(pr, pi, er, ei)
    return pr, pi, er, ei


# --------------------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True)
def _count_nonfinite(x, first, m):  # pragma: no cover - compiled
    count = 0
    for s in range(first, first + m):
        for i in range(x.shape[1]):
            count += not math.isfinite(x[s, i])
    return count


@numba.njit(cache=True, nogil=True)
def _forward_groups(a, b, zr, zi, out, bad, start, stop):  # pragma: no cover - compiled
    """g for the systems of groups ``start..stop-1`` into ``out [S, N, 2]``; ``bad[group]`` counts
    non-finite entries of ``a``, ``b``, ``zr``, ``zi`` and ``Im z <= 0`` (the outputs are then
    meaningless)."""
    n_sys, n = a.shape
    for grp in range(start, stop):
        s0 = grp * GROUP
        m = min(GROUP, n_sys - s0)
        bad[grp] = _count_nonfinite(a, s0, m) + _count_nonfinite(b, s0, m)
        for s in range(s0, s0 + m):
            bad[grp] += not (math.isfinite(zr[s]) and math.isfinite(zi[s]) and zi[s] > 0)
        if m == GROUP:
            g0 = _forward_first(a, zr, zi, out, s0)
            g1 = _forward_first(a, zr, zi, out, s0 + 1)
            g2 = _forward_first(a, zr, zi, out, s0 + 2)
            g3 = _forward_first(a, zr, zi, out, s0 + 3)
            for i in range(1, n):
                g0 = _forward_at(a, b, zr, zi, out, s0, i, g0)
                g1 = _forward_at(a, b, zr, zi, out, s0 + 1, i, g1)
                g2 = _forward_at(a, b, zr, zi, out, s0 + 2, i, g2)
                g3 = _forward_at(a, b, zr, zi, out, s0 + 3, i, g3)
        else:
            for s in range(s0, s0 + m):
                g = _forward_first(a, zr, zi, out, s)
                for i in range(1, n):
                    g = _forward_at(a, b, zr, zi, out, s, i, g)


@numba.njit(cache=True, nogil=True)
def _gradient_groups(g, b, grad, g_diag, g_off, g_zr, g_zi, start, stop):  # pragma: no cover - compiled
    """The causal op's four input gradients from its output ``g`` and the output's gradient
    ``grad`` (both ``[S, N, 2]``): grad diag = Re Lambda, grad off, grad Re z = -sum Re Lambda,
    grad Im z = sum Im Lambda (see ``_backward_at``)."""
    n_sys, n = g.shape[0], g.shape[1]
    j = n - 1
    for grp in range(start, stop):
        s0 = grp * GROUP
        m = min(GROUP, n_sys - s0)
        if m == GROUP:
            t0 = _backward_last(g, grad, g_diag, s0, j)
            t1 = _backward_last(g, grad, g_diag, s0 + 1, j)
            t2 = _backward_last(g, grad, g_diag, s0 + 2, j)
            t3 = _backward_last(g, grad, g_diag, s0 + 3, j)
            for i in range(n - 2, -1, -1):
                t0 = _backward_at(g, b, grad, g_diag, g_off, s0, i, t0)
                t1 = _backward_at(g, b, grad, g_diag, g_off, s0 + 1, i, t1)
                t2 = _backward_at(g, b, grad, g_diag, g_off, s0 + 2, i, t2)
                t3 = _backward_at(g, b, grad, g_diag, g_off, s0 + 3, i, t3)
            sums = ((t0[6], t0[7]), (t1[6], t1[7]), (t2[6], t2[7]), (t3[6], t3[7]))
            for k in range(GROUP):
                g_zr[s0 + k] = -sums[k][0]
                g_zi[s0 + k] = sums[k][1]
        else:
            for s in range(s0, s0 + m):
                t = _backward_last(g, grad, g_diag, s, j)
                for i in range(n - 2, -1, -1):
                    t = _backward_at(g, b, grad, g_diag, g_off, s, i, t)
                g_zr[s] = -t[6]
                g_zi[s] = t[7]


@numba.njit(cache=True, nogil=True)
def _adjoint_groups(g, b, w, out, start, stop):  # pragma: no cover - compiled
    """Lambda = dL/dd ``[S, N, 2]`` from g and w = conj(grad g) (``[S, N, 2]`` each), one system at
    a time (the non-causal op's path)."""
    n_sys, n = g.shape[0], g.shape[1]
    for s in range(start * GROUP, min(stop * GROUP, n_sys)):
        state = (0.0, 0.0, 0.0, 0.0)
        for i in range(n - 1, -1, -1):
            state = _adjoint_at(g, b, w, out, s, i, state)


# --------------------------------------------------------------------------- launchers
def _run(kernel, n_sys: int, n: int, *arrays: np.ndarray) -> None:
    """``kernel`` over all groups of systems, on several threads when the work repays it."""
    groups = -(-n_sys // GROUP)
    k = threads()
    if n_sys * n < PARALLEL_MIN_POSITIONS or k < 2:
        kernel(*arrays, 0, groups)
        return
    piece = -(-groups // (k * PIECES_PER_THREAD))
    share_work(lambda start, stop: kernel(*arrays, start, stop), groups, k, piece)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _rows(t: torch.Tensor, *shape: int, dtype: np.dtype | None = None) -> np.ndarray:
    """``t`` as a C-contiguous numpy array of ``shape`` (a view when it is one already, e.g.
    ``[..., N] -> [S, N]``; a copy of an expanded or strided tensor): numpy's reshape costs a
    fraction of a torch op's dispatch, which at small sizes is most of the op's time."""
    return np.ascontiguousarray(t.detach().numpy(), dtype=dtype).reshape(shape)


def _float64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy(), dtype=np.float64)  # numpy: cheaper than a torch op here


def _couplings(b: torch.Tensor, s: int, n: int) -> np.ndarray:
    return _rows(b, s, n - 1) if n > 1 else np.zeros((s, 1), dtype=_NUMPY[b.dtype])  # never read when N = 1


def _real(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float32, torch.complex64) else torch.float64


_NUMPY = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def op_forward(diag: torch.Tensor, off: torch.Tensor, z_re: torch.Tensor, z_im: torch.Tensor) -> torch.Tensor | None:
    """The causal op's output ``[..., N, 2]`` in ``diag``'s dtype, from the op's own inputs
    (``diag [..., N]``, ``off [..., N-1]``, ``z_re, z_im`` of the batch shape ``[...]``); None
    when an input is not finite or ``Im z <= 0`` (the caller's checks then say which), so that
    a valid call runs no PyTorch op over the positions."""
    n = diag.shape[-1]
    s = diag.numel() // n
    out = torch.empty(diag.shape + (2,), dtype=diag.dtype)
    bad = np.zeros(-(-s // GROUP), dtype=np.int64)
    _run(_forward_groups, s, n, _rows(diag, s, n), _couplings(off, s, n), _rows(z_re, s, dtype=np.float64),
         _rows(z_im, s, dtype=np.float64), out.numpy().reshape(s, n, 2), bad)
    return None if bad.any() else out


def op_backward(
    grad: torch.Tensor, out: torch.Tensor, diag: torch.Tensor, off: torch.Tensor, z_re: torch.Tensor,
    z_im: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for ``diag``, ``off``, ``z_re`` and ``z_im`` (in their shapes) of the causal op,
    from its output ``out`` and that output's gradient ``grad`` (``[..., N, 2]`` each)."""
    n = diag.shape[-1]
    s = diag.numel() // n
    dtype = diag.dtype
    g_diag, g_off = torch.empty(diag.shape, dtype=dtype), torch.empty(off.shape, dtype=dtype)
    g_zr, g_zi = torch.empty(z_re.shape, dtype=dtype), torch.empty(z_im.shape, dtype=dtype)
    g_off_np = g_off.numpy().reshape(s, n - 1) if n > 1 else np.empty((s, 1), dtype=_NUMPY[dtype])  # unwritten at N = 1
    grad = grad if grad.dtype == dtype else grad.to(dtype)
    _run(_gradient_groups, s, n, _rows(out, s, n, 2), _couplings(off, s, n), _rows(grad, s, n, 2),
         g_diag.numpy().reshape(s, n), g_off_np, g_zr.numpy().reshape(s), g_zi.numpy().reshape(s))
    return g_diag, g_off, g_zr, g_zi


def causal_forward(
    a: torch.Tensor, b: torch.Tensor, zr: torch.Tensor, zi: torch.Tensor, out_dtype: torch.dtype = torch.complex128
) -> torch.Tensor:
    """``g`` (``out_dtype`` ``[S, N]``) from ``a [S, N]``, ``b [S, N-1]``, ``zr, zi [S]`` (CPU tensors)."""
    s, n = a.shape
    out = torch.empty((s, n, 2), dtype=_real(out_dtype))
    bad = np.zeros(-(-s // GROUP), dtype=np.int64)
    _run(_forward_groups, s, n, _np(a), _couplings(b, s, n), _float64(zr), _float64(zi), out.numpy(), bad)
    return torch.view_as_complex(out)


def causal_backward(
    g: torch.Tensor, b: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype = torch.complex128
) -> torch.Tensor:
    """``Lambda = dL/dd`` (``out_dtype`` ``[S, N]``) given ``g [S, N]``, ``b [S, N-1]`` and
    ``w = conj(grad_g)`` (CPU tensors)."""
    s, n = g.shape
    out = torch.empty((s, n, 2), dtype=_real(out_dtype))
    g2, w2 = torch.view_as_real(g.resolve_conj()), torch.view_as_real(w.resolve_conj())
    _run(_adjoint_groups, s, n, _np(g2), _couplings(b, s, n), _np(w2), out.numpy())
    return torch.view_as_complex(out)
