"""The selective scan: the sequential reference, and the fast pure-PyTorch scan checked against it.

Both take ``mamba_ssm``'s ``selective_scan_fn`` arguments and shapes, so the three
backends are interchangeable::

    u, delta, z: (batch, dim, L)    A: (dim, state)    B, C: (batch, state, L)    D, delta_bias: (dim,)

and compute, per channel d and state n,

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,    y_t = C_t . h_t + D u_t,    out_t = y_t * silu(z_t).

``selective_scan_ref`` is the spec (a loop over time, as in ``mamba_ssm``). ``selective_scan``
is what runs on CPU, and on GPUs without ``mamba-ssm``: the same maths as one
``torch.library`` custom op with a hand-written backward (a second custom op), like
``mamba_ssm``'s kernel, and FLOP formulas for both that count the maths (``docs/flops.md``).
Its ``kernel`` argument picks how the recurrence runs: ``compiled`` (``compiled.py``, numba;
CPU tensors, the default there when numba is installed) or ``torch`` (the chunked scan
below, any device). Both give the reference's result within rounding and keep outputs causal
bit for bit. Their forwards share the elementwise work around the recurrence (dt bias and
softplus, ``D u``, the gate) in torch; the torch kernel's backward does those gradients in torch
too (``_gate_backward``, ``_input_grads``), the compiled one inside its kernel.

Why hand-written: torch has no linear-recurrence op, and the loop form is slow in both
directions (``transformers``' CPU path indexes one step at a time, and each index's backward
writes a full-size gradient, so its backward is O(L^2)). The ``torch`` kernel runs the
recurrence chunked: one vectorised Python step per position within a chunk and one per chunk
(a few times sqrt(L) steps in all), O(L) work forwards and backwards. It only multiplies by
decays ``exp(dt A) <= 1`` and adds (it never divides, nor exponentiates a sum), so it stays
finite at any length; state t is computed only from steps <= t, so outputs are strictly
causal bit for bit. Backward recomputes the (L, batch, dim, state) tensors instead of keeping
them, so a layer's saved activations are O(L * batch * dim), not O(L * batch * dim * state).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # mamba_ssm computes in fp32; keep float64 as float64 so the reference can check gradients.
    return torch.promote_types(dtype, torch.float32)


def _discretize(u, delta, A, B, delta_bias, delta_softplus):
    ct = _compute_dtype(u.dtype)
    u, delta = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A.to(ct), B.to(ct)


def _delta_full(delta, delta_bias, ct):
    """delta plus its bias, in the compute dtype (before softplus)."""
    return delta.to(ct) if delta_bias is None else delta.to(ct) + delta_bias[:, None].to(ct)


def _gate_backward(grad_out, y, z):
    """``(dL/dy, dL/dz)`` from ``dL/dout`` for ``out = y * silu(z)`` (``out = y`` without z)."""
    grad_out = grad_out.to(y.dtype)
    if z is None:
        return grad_out, None
    zf = z.to(y.dtype)
    sig = torch.sigmoid(zf)
    grad_z = (grad_out * y * sig * (1 + zf * (1 - sig))).to(z.dtype)
    return grad_out * zf * sig, grad_z


def _input_grads(grad_u, grad_dt, grad_y, D, delta_full, delta_bias, delta_softplus):
    """``(du, d delta, d delta_bias)`` from the recurrence's ``du`` and ``d dt``, adding the
    ``D u`` term and going back through softplus and the bias."""
    if D is not None:
        grad_u = grad_u + grad_y * D[:, None].to(grad_y.dtype)
    grad_delta = grad_dt
    if delta_softplus:  # softplus' = sigmoid, and 1 where F.softplus is linear (x > 20)
        grad_delta = grad_delta * torch.where(delta_full > 20, 1.0, torch.sigmoid(delta_full))
    grad_bias = None if delta_bias is None else grad_delta.sum((0, 2)).to(delta_bias.dtype)
    return grad_u, grad_delta, grad_bias


def _finish(y, u, D, z, dtype_in):
    out = y if D is None else y + u * D[:, None].to(y.dtype)
    if z is not None:
        out = out * F.silu(z.to(y.dtype))
    return out.to(dtype_in)


# --------------------------------------------------------------------------- reference
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential selective scan, one time step at a time: the spec the fast scans are tested against."""
    dtype_in = u.dtype
    u, delta, A, B = _discretize(u, delta, A, B, delta_bias, delta_softplus)
    C = C.to(u.dtype)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    # unbind, not indexing: one step's backward then writes one step's gradient, not a full-size one
    for a_t, bu_t, C_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), C.unbind(2)):
        h = a_t * h + bu_t
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    return _finish(torch.stack(ys, dim=2), u, D, z, dtype_in)


# --------------------------------------------------------------------------- fast scan
def default_chunk_size(length: int) -> int:
    """About sqrt(L), so the in-chunk and across-chunk loops take about as many steps each."""
    return max(1, 2 ** round(math.log2(math.sqrt(max(length, 1)))))


# The recurrence is run on (chunks, T, M) views of time-major (L, M) tensors: first every
# chunk's end state from a zero start (all chunks at once, T vectorised steps), then the
# true state entering each chunk (one step per chunk), then every chunk again from its true
# entering state.
@torch.no_grad()
def _chunk_entry_states(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For h_t = a_t h_{t-1} + b_t over (chunks, T, M) views, h = 0 before the start: the state entering each chunk."""
    end, decay = b[:, 0].clone(), a[:, 0].clone()
    for i in range(1, a.shape[1]):
        end.mul_(a[:, i]).add_(b[:, i])
        decay.mul_(a[:, i])
    enter = torch.zeros_like(end)
    for j in range(1, a.shape[0]):
        torch.addcmul(end[j - 1], decay[j - 1], enter[j - 1], out=enter[j])
    return enter


@torch.no_grad()
def _run_chunks(a: torch.Tensor, b: torch.Tensor, enter: torch.Tensor) -> torch.Tensor:
    """Overwrite ``b`` with h_t = a_t h_{t-1} + b_t, each chunk starting from ``enter``."""
    b[:, 0].addcmul_(a[:, 0], enter)
    for i in range(1, a.shape[1]):
        b[:, i].addcmul_(a[:, i], b[:, i - 1])
    return b


@torch.no_grad()
def _chunk_entry_adjoints(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """For the adjoint g_t = g_t + a_{t+1} g_{t+1} (zero after the end): what enters each chunk's last step."""
    T = a.shape[1]
    start, decay = g[:, T - 1].clone(), torch.ones_like(g[:, 0])
    for i in range(T - 2, -1, -1):
        start.mul_(a[:, i + 1]).add_(g[:, i])
        decay.mul_(a[:, i + 1])
    enter = torch.zeros_like(start)
    for j in range(a.shape[0] - 2, -1, -1):
        torch.mul(a[j + 1, 0], torch.addcmul(start[j + 1], decay[j + 1], enter[j + 1]), out=enter[j])
    return enter


@torch.no_grad()
def _run_chunks_reverse(a: torch.Tensor, g: torch.Tensor, enter: torch.Tensor) -> torch.Tensor:
    """Overwrite ``g`` with g_t + a_{t+1} g_{t+1}, each chunk's last step receiving ``enter``."""
    T = a.shape[1]
    g[:, T - 1].add_(enter)
    for i in range(T - 2, -1, -1):
        g[:, i].addcmul_(a[:, i + 1], g[:, i + 1])
    return g


class _Discretized:
    """dt, u, B, C time-major (L', batch, ·) padded to whole chunks, and the big (L', batch, dim, state) tensors."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus, chunk_size):
        ct = _compute_dtype(u.dtype)
        length = u.shape[-1]
        self.n_chunks = -(-length // chunk_size)
        pad = self.n_chunks * chunk_size - length
        self.delta = _delta_full(delta, delta_bias, ct)
        dt = F.softplus(self.delta) if delta_softplus else self.delta

        def time_major(x):  # padding after the end: dt = 0 there, so padded steps keep h and add 0
            return F.pad(x.to(ct), (0, pad)).permute(2, 0, 1).contiguous()

        self.dt, self.u, self.B, self.C = time_major(dt), time_major(u), time_major(B), time_major(C)
        self.A = A.to(ct)
        self.dtu = self.dt * self.u
        self.a = torch.mul(self.dt.unsqueeze(-1), self.A).exp_()  # exp(dt A) <= 1
        self.bu = self.dtu.unsqueeze(-1) * self.B.unsqueeze(2)  # dt B u

    def chunks(self, x):
        return x.view(self.n_chunks, -1, x[0].numel())


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    """The output, and what backward needs: the state entering each chunk and y before gating."""
    length = u.shape[-1]
    p = _Discretized(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size)
    enter = _chunk_entry_states(p.chunks(p.a), p.chunks(p.bu))
    h = _run_chunks(p.chunks(p.a), p.chunks(p.bu), enter).view_as(p.bu)
    y = torch.einsum("lbdn,lbn->lbd", h, p.C)[:length].permute(1, 2, 0)
    if D is not None:
        y = y + p.u[:length].permute(1, 2, 0) * D[:, None].to(y.dtype)
    out = y if z is None else y * F.silu(z.to(y.dtype))
    return out.to(u.dtype), enter, y


def _scan_backward(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size):
    """Gradients for ``u, delta, A, B, C, D, z, delta_bias`` (None for an absent input)."""
    length = u.shape[-1]
    p = _Discretized(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size)
    h = _run_chunks(p.chunks(p.a), p.chunks(p.bu), enter).view_as(p.bu)
    grad_out, grad_z = _gate_backward(grad_out, y, z)
    grad_D = None if D is None else (grad_out * p.u[:length].permute(1, 2, 0)).sum((0, 2)).to(D.dtype)
    pad = p.u.shape[0] - length
    grad_y = F.pad(grad_out, (0, pad)).permute(2, 0, 1).contiguous()  # (L', batch, dim)

    grad_C = torch.einsum("lbdn,lbd->lbn", h, grad_y)
    g = grad_y.unsqueeze(-1) * p.C.unsqueeze(2)  # dL/dh_t from y_t only ...
    _run_chunks_reverse(p.chunks(p.a), p.chunks(g), _chunk_entry_adjoints(p.chunks(p.a), p.chunks(g)))
    # ... and now through the recurrence: dL/dh_t, which is also dL/d(dt B u)_t.
    grad_dtu = torch.einsum("lbdn,lbn->lbd", g, p.B)
    grad_B = torch.einsum("lbdn,lbd->lbn", g, p.dtu)
    # dL/d(dt A)_t = dL/dh_t * h_{t-1} * a_t, in place.
    g[1:].mul_(h[:-1])
    g[0].zero_()
    g.mul_(p.a)
    grad_A = torch.einsum("lbdn,lbd->dn", g, p.dt)
    grad_dt = torch.einsum("lbdn,dn->lbd", g, p.A) + grad_dtu * p.u
    grad_u = grad_dtu * p.dt

    def batch_major(x):
        return x[:length].permute(1, 2, 0)

    grad_u, grad_delta, grad_bias = _input_grads(
        batch_major(grad_u), batch_major(grad_dt), grad_out, D, p.delta, delta_bias, delta_softplus
    )
    return (
        grad_u.to(u.dtype),
        grad_delta.to(delta.dtype),
        grad_A.to(A.dtype),
        batch_major(grad_B).to(B.dtype),
        batch_major(grad_C).to(C.dtype),
        grad_D,
        grad_z,
        grad_bias,
    )


# --------------------------------------------------------------------------- compiled kernel
KERNELS = ("compiled", "torch")


def numba_installed() -> bool:
    """Whether the ``compiled`` kernel can run (numba is found; imported only on first use)."""
    return importlib.util.find_spec("numba") is not None


def default_kernel(device: torch.device) -> str:
    """``compiled`` for CPU tensors when numba is installed, else ``torch``."""
    return "compiled" if device.type == "cpu" and numba_installed() else "torch"


def _compiled(u):
    if u.device.type != "cpu":
        raise ValueError(f"the compiled selective scan runs on CPU tensors, not {u.device.type}; use kernel='torch'")
    from . import compiled

    return compiled


def _compiled_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    """As ``_scan_forward``, with the recurrence, ``D u`` and the gate in ``compiled.py``; ``enter``
    has the same layout. dt's bias and softplus stay in torch. Results are stored lanes-last
    (``_lanes_last``), the layout of the mixer's projections."""
    ct = _compute_dtype(u.dtype)
    dt = _delta_full(delta, delta_bias, ct)
    dt = F.softplus(dt) if delta_softplus else dt
    out, enter, y = _compiled(u).forward(dt, u, A, B, C, D, z, chunk_size)
    return out.to(u.dtype), enter, out if y is None else y


def _compiled_backward(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size):
    """As ``_scan_backward``, in ``compiled.py`` (the adjoint recurrence, the gate's, D's, softplus'
    and the bias's gradients)."""
    ct = _compute_dtype(u.dtype)
    full = _delta_full(delta, delta_bias, ct)
    dt = F.softplus(full) if delta_softplus else full
    du, ddelta, dA, dB, dC, dD, dz, dbias = _compiled(u).backward(
        dt, full, delta_softplus, u, A, B, C, D, z, y, grad_out, enter, chunk_size
    )
    return (
        du.to(u.dtype),
        ddelta.to(delta.dtype),
        dA.to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        None if D is None else dD.to(D.dtype),
        None if z is None else dz.to(z.dtype),
        None if delta_bias is None else dbias.to(delta_bias.dtype),
    )


# --------------------------------------------------------------------------- custom ops
# The scan is a ``torch.library`` custom op (forward and backward each one op) rather than an
# autograd.Function so that FlopCounterMode sees it as one op and counts it by the formulas
# below; as a Function, the counter saw only its einsums and none of its elementwise work.
# Forward saves only its inputs, the ungated output and one state per chunk; backward
# recomputes the (L, batch, dim, state) tensors, as mamba_ssm's kernel does. Both ops are
# opaque to torch.compile. For the torch kernel their fake kernels are the real code run on fake
# tensors, so fake and real outputs have the same strides, and the layers around the scan get
# the same layouts (and so the same rounding) as when the code ran as a Function; the compiled
# kernel stores its (batch, ·, L) results lanes-last, and its fake kernels say so (both checked
# by ``torch.library.opcheck`` in the tests). An absent optional result is
# an empty tensor (an op returns tensors, not None).
def _forward_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel="torch"):
    run = _compiled_forward if kernel == "compiled" else _scan_forward
    out, enter, y = run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return out, enter, y if z is not None else y.new_empty(0)  # without z, y is out itself


def _backward_op(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size, kernel="torch"):
    run = _compiled_backward if kernel == "compiled" else _scan_backward
    grads = run(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size)
    return tuple(u.new_empty(0) if g is None else g for g in grads)


def _fake_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel="torch"):
    if kernel != "compiled":  # the real torch code on fake tensors: the same strides as the real run
        return _forward_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    ct = _compute_dtype(u.dtype)
    b, d, length = u.shape
    n_chunks = -(-length // chunk_size)
    y = _lanes_last(u, d, ct) if z is not None else u.new_empty(0, dtype=ct)
    return _lanes_last(u, d, u.dtype), u.new_empty((n_chunks, b * d * A.shape[1]), dtype=ct), y


def _lanes_last(like, rows, dtype):
    """An empty (batch, rows, L) tensor stored as (batch, L, rows), as the compiled kernel's results."""
    return like.new_empty((like.shape[0], like.shape[2], rows), dtype=dtype).transpose(1, 2)


def _fake_backward(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size, kernel="torch"):
    if kernel != "compiled":
        return _backward_op(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size)
    d, n = A.shape
    return (_lanes_last(u, d, u.dtype), _lanes_last(u, d, delta.dtype), A.new_empty(A.shape),
            _lanes_last(u, n, B.dtype), _lanes_last(u, n, C.dtype), u.new_empty(0) if D is None else D.new_empty(D.shape),
            u.new_empty(0) if z is None else _lanes_last(u, d, z.dtype),
            u.new_empty(0) if delta_bias is None else delta_bias.new_empty(delta_bias.shape))


@torch.library.custom_op("mkeval_mamba::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, chunk_size: int, kernel: str = "torch",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, enter, y)``: the scan's output, the state entering each chunk, and (only with
    ``z``; else empty) the output before gating; the last two are saved for backward.
    ``kernel``: ``torch`` or ``compiled`` (see the module docstring)."""
    return _forward_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel)


@torch.library.custom_op("mkeval_mamba::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(
    grad_out: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], enter: Tensor, y: Tensor, delta_softplus: bool,
    chunk_size: int, kernel: str = "torch",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``selective_scan_op``'s output for ``u, delta, A, B, C, D, z, delta_bias``
    (empty for an absent input)."""
    return _backward_op(grad_out, u, delta, A, B, C, D, z, delta_bias, enter, y, delta_softplus, chunk_size, kernel)


selective_scan_op.register_fake(_fake_forward)
selective_scan_backward_op.register_fake(_fake_backward)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, kernel = inputs
    _, enter, y = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, enter, y)
    ctx.delta_softplus, ctx.chunk_size, ctx.kernel = delta_softplus, chunk_size, kernel
    ctx.present = tuple(t is not None for t in (D, z, delta_bias))


def _autograd_backward(ctx, grad_out, _grad_enter, _grad_y):
    saved = ctx.saved_tensors
    grads = torch.ops.mkeval_mamba.selective_scan_backward(
        grad_out, *saved, ctx.delta_softplus, ctx.chunk_size, ctx.kernel
    )
    optional = tuple(g if present else None for g, present in zip(grads[5:], ctx.present))
    return (*grads[:5], *optional, None, None, None)


selective_scan_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size=None, kernel=None
):
    """``selective_scan_ref``'s result with O(L) work, on ``kernel`` (``compiled`` or ``torch``;
    None: ``default_kernel``)."""
    kernel = kernel or default_kernel(u.device)
    if kernel not in KERNELS:
        raise ValueError(f"unknown selective-scan kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    length = u.shape[-1]
    T = max(1, min(chunk_size or default_chunk_size(length), length))
    return torch.ops.mkeval_mamba.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, T, kernel)[0]


# --------------------------------------------------------------------------- FLOP formulas
# Real floating-point operations of the maths in the module docstring, run as a sequential
# scan: one per add, multiply, divide, exp or log1p; a sum of k products is 2k, as in 2mnk.
# The chunked scan does more (every recurrence step runs twice each way, plus the chunk
# decays: +3 per element forward and backward), as a blocked matmul does more than 2mnk; the
# formulas count the maths, as the BK plugin's do.
#
# Forward, per (batch, channel, position, state): a = exp(dt A) (2), (dt u) B (1),
# h = a h + (dt u) B (2), y = sum_n C h (2).
FORWARD_PER_STATE = 7
# Backward, per (batch, channel, position, state): recompute a, (dt u) B and h (5, as mamba_ssm's
# kernel does too), dC = sum_d h dy (2), dL/dh from y (1), the adjoint recurrence
# g_t += a_{t+1} g_{t+1} (2), d(dt u) = sum_n g B (2), dB = sum_d g (dt u) (2), g h_{t-1} a (2),
# dA = sum g dt (2), d(dt) from A: sum_n g A (2).
BACKWARD_PER_STATE = 20
# Per (batch, channel, position), always: forward dt u (1); backward recompute dt u (1),
# d(dt) += d(dt u) u (2), du = d(dt u) dt (1).
FORWARD_PER_CHANNEL = 1
BACKWARD_PER_CHANNEL = 4
# ... and per optional input, (forward, backward) per (batch, channel, position):
# delta_bias: + bias (1); recompute (1), its gradient's sum (1).
# delta_softplus: log1p(exp) (2); recompute (2), sigmoid = 1 / (1 + exp(-x)) (3), product (1).
# D: + D u (2); dD = sum dy u (2), du += dy D (2).
# z: silu(z) = z / (1 + exp(-z)) (3), gate (1); sigmoid (3),
#    dz = dy y s (1 + z (1 - s)) (6), dy z s (2).
OPTIONAL_PER_CHANNEL = {"delta_bias": (1, 2), "delta_softplus": (2, 6), "D": (2, 4), "z": (4, 11)}


def scan_flops_per_position(d_state: int, D: bool, z: bool, delta_bias: bool, delta_softplus: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs of the scan per (batch, channel, position)."""
    present = {"D": D, "z": z, "delta_bias": delta_bias, "delta_softplus": delta_softplus}
    fwd = FORWARD_PER_STATE * d_state + FORWARD_PER_CHANNEL
    bwd = BACKWARD_PER_STATE * d_state + BACKWARD_PER_CHANNEL
    for name, (f, b) in OPTIONAL_PER_CHANNEL.items():
        if present[name]:
            fwd, bwd = fwd + f, bwd + b
    return fwd, bwd


def _per_position(u_shape, A_shape, D_shape, z_shape, delta_bias_shape, delta_softplus) -> tuple[int, int]:
    return scan_flops_per_position(A_shape[1], D_shape is not None, z_shape is not None,
                                   delta_bias_shape is not None, bool(delta_softplus))


def selective_scan_flops(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, delta_bias_shape,
                         delta_softplus, chunk_size, *args, out_shape=None, **kwargs) -> int:  # args: kernel
    """FLOP formula of ``mkeval_mamba::selective_scan`` (``torch.utils.flop_counter`` convention)."""
    return math.prod(u_shape) * _per_position(u_shape, A_shape, D_shape, z_shape, delta_bias_shape, delta_softplus)[0]


def selective_scan_backward_flops(grad_shape, u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
                                  delta_bias_shape, enter_shape, y_shape, delta_softplus, chunk_size, *args,
                                  out_shape=None, **kwargs) -> int:
    """FLOP formula of ``mkeval_mamba::selective_scan_backward``."""
    return math.prod(u_shape) * _per_position(u_shape, A_shape, D_shape, z_shape, delta_bias_shape, delta_softplus)[1]


FLOP_FORMULAS = {
    torch.ops.mkeval_mamba.selective_scan: selective_scan_flops,
    torch.ops.mkeval_mamba.selective_scan_backward: selective_scan_backward_flops,
}
