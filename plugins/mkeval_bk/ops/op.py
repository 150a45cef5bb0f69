"""The public op ``resolvent_diagonal``: input checks, the ``torch.library`` custom ops,
backend dispatch, and FLOP formulas.

Two custom ops carry the work (both opaque to ``torch.compile``; their fake kernels give
shapes only):

- ``mkeval_bk::resolvent_diagonal(diag, off, z_re, z_im, causal) -> Tensor[..., N, 2]``
  (real and imaginary parts, so no complex tensor crosses a compiled graph), and
- ``mkeval_bk::resolvent_diagonal_backward(...)``, its exact O(N) vector-Jacobian product.

Every backend provides the causal recursion only: ``forward(a, b, zr, zi, out_dtype) -> g``
and ``backward(g, b, w, out_dtype) -> Lambda`` on flattened ``[S, N]`` systems (see
``reference.py`` for the maths). The non-causal diagonal is assembled here from a forward
and a backward (reversed) causal pass, so it is exact on every backend too. A backend may
also fuse the whole causal op (``op_forward``, ``op_backward``: the op's own inputs, outputs
and gradients, no PyTorch ops around the kernel); the compiled backend does.

Backends: ``reference`` (per-position loops), ``cpu`` (chunked PyTorch scan; runs on any
device), ``compiled`` (the sequential recursion compiled by numba; CPU tensors),
``triton`` (CUDA, or CPU under ``TRITON_INTERPRET=1``). CUDA tensors use ``triton`` when it
imports, CPU tensors ``compiled`` when numba is installed, everything else ``cpu``;
``MKEVAL_BK_BACKEND`` forces one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from . import cpu, reference

BACKENDS = ("reference", "cpu", "compiled", "triton")
BACKEND_ENV = "MKEVAL_BK_BACKEND"


class BackendUnavailable(RuntimeError):
    """The backend asked for (``MKEVAL_BK_BACKEND`` or ``forced_backend``) cannot run here."""


# --------------------------------------------------------------------------- dispatch
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_module(device: torch.device) -> ModuleType:
    if device.type == "cpu" and not _interpreting():
        raise BackendUnavailable(
            f"the triton backend needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run "
            "the Triton kernels in Triton's interpreter on CPU, or use cpu/reference"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"the triton backend supports CUDA (or CPU in interpreter mode), not {device.type}")
    try:
        from . import triton_kernels
    except ImportError as exc:
        raise BackendUnavailable(f"the triton backend needs the `triton` package: {exc}") from exc
    if triton_kernels.INTERPRETED != _interpreting():
        # triton.jit picks interpreter or compiler when it decorates (triton's own library too)
        raise BackendUnavailable(
            f"TRITON_INTERPRET changed after triton was imported (kernels built with interpreter="
            f"{triton_kernels.INTERPRETED}); set it before the process starts"
        )
    return triton_kernels


_compiled: ModuleType | None = None  # compiled.py once imported (an import statement per call costs microseconds)


def _compiled_module(device: torch.device) -> ModuleType:
    global _compiled
    if device.type != "cpu":
        raise BackendUnavailable(f"the compiled backend runs on CPU tensors, not {device.type}; use triton or cpu")
    if _compiled is None:
        try:
            from . import compiled
        except ImportError as exc:
            raise BackendUnavailable(
                f"the compiled backend needs the `numba` package ({exc}); `pip install numba`, or use "
                f"{BACKEND_ENV}=cpu for the chunked PyTorch scan"
            ) from exc
        _compiled = compiled
    return _compiled


def _numba_installed() -> bool:
    # find_spec, not import: importing numba takes a quarter of a second, paid on first use instead
    return importlib.util.find_spec("numba") is not None


_forced: str | None = None


@contextlib.contextmanager
def forced_backend(name: str | None) -> Iterator[None]:
    """Run the op on backend ``name`` inside the block (None: the usual choice); for benchmarks."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def backend_name(device: torch.device) -> str:
    """The backend that runs on ``device``: ``forced_backend``, else ``MKEVAL_BK_BACKEND``,
    else triton on CUDA (when it imports), compiled on CPU (when numba is installed), cpu elsewhere."""
    forced = _forced or os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in BACKENDS:
            raise BackendUnavailable(f"{BACKEND_ENV}={forced!r} is not a backend; choose one of {', '.join(BACKENDS)}")
        return forced
    if device.type == "cuda":
        try:
            _triton_module(device)
            return "triton"
        except BackendUnavailable:
            return "cpu"
    if device.type == "cpu" and _numba_installed():
        return "compiled"
    return "cpu"


def _backend(device: torch.device) -> Any:
    name = backend_name(device)
    if name == "reference":
        return _ReferenceBackend
    if name == "cpu":
        return cpu
    if name == "compiled":
        return _compiled_module(device)
    return _triton_module(device)


class _ReferenceBackend:
    """``reference.py`` behind the backend interface (computes in the inputs' precision)."""

    @staticmethod
    def causal_forward(a, b, zr, zi, out_dtype):
        return reference.causal_forward(a, b, zr, zi).to(out_dtype)

    @staticmethod
    def causal_backward(g, b, w, out_dtype):
        real = torch.float64 if out_dtype == torch.complex128 else torch.float32
        return reference.causal_backward(g.to(out_dtype), b.to(real), w.to(out_dtype))


# --------------------------------------------------------------------------- checks
def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _check_shapes(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor) -> None:
    for name, t in (("diag", diag), ("off", off)):
        if t.dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"{name} must be a real float32 or float64 tensor, got {t.dtype}"
                + ("; cast it with .float() (the recursion needs float32 range)" if t.is_floating_point() else "")
            )
    if off.dtype != diag.dtype:
        raise ValueError(f"diag and off must have the same dtype, got {diag.dtype} and {off.dtype}")
    if diag.dim() < 1 or diag.shape[-1] < 1:
        raise ValueError(f"diag must have shape [..., N] with N >= 1, got {tuple(diag.shape)}")
    n = diag.shape[-1]
    if off.shape != diag.shape[:-1] + (n - 1,):
        raise ValueError(
            f"off must have shape {tuple(diag.shape[:-1]) + (n - 1,)} (diag's batch shape, then N-1 = {n - 1} "
            f"off-diagonals), got {tuple(off.shape)}"
        )
    for name, t in (("Re z", z_re), ("Im z", z_im)):
        if t.shape != diag.shape[:-1]:
            raise ValueError(f"{name} must have diag's batch shape {tuple(diag.shape[:-1])}, got {tuple(t.shape)}")
    if len({diag.device, off.device, z_re.device, z_im.device}) > 1:
        raise ValueError(
            f"diag, off and z must be on one device, got {diag.device}, {off.device}, {z_re.device}, {z_im.device}"
        )


def _bad_values(name: str, bad: Tensor, what: str) -> str:
    where = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.dim() else ()
    return f"{name} has {int(bad.sum())} {what} value(s), the first at index {where}"


def _check_values(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor) -> None:
    finite = [("diag (the potential)", diag), ("off (the couplings)", off), ("Re z", z_re), ("Im z", z_im)]
    ok = torch.stack([torch.isfinite(t).all() for _, t in finite] + [(z_im > 0).all()]).all()
    if bool(ok):  # one device sync on the good path
        return
    for name, t in finite:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(_bad_values(name, ~torch.isfinite(t), "non-finite"))
    raise ValueError(
        _bad_values("Im z", z_im <= 0, "non-positive")
        + "; the resolvent needs Im z > 0 (it keeps every Schur complement away from zero)"
    )


# --------------------------------------------------------------------------- the maths on [S, N]
def _flat(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = diag.shape[-1]
    s = diag.numel() // n
    return diag.reshape(s, n), off.reshape(s, n - 1), z_re.reshape(s), z_im.reshape(s)


def _forward(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor, causal: bool) -> Tensor:
    a, b, zr, zi = _flat(diag, off, z_re, z_im)
    backend = _backend(diag.device)
    out_dtype = _complex_of(diag.dtype)
    if causal:
        return backend.causal_forward(a, b, zr, zi, out_dtype)
    gl = backend.causal_forward(a, b, zr, zi, torch.complex128)
    gr = backend.causal_forward(a.flip(-1), b.flip(-1), zr, zi, torch.complex128).flip(-1)
    d = torch.complex(a.double() - zr.double()[:, None], (-zi.double())[:, None].expand_as(a))
    return reference.combine(d, b.double() ** 2, gl, gr).to(out_dtype)


def _backward(
    grad: Tensor, out: Tensor, diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor, causal: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    a, b, zr, zi = _flat(diag, off, z_re, z_im)
    backend = _backend(diag.device)
    cdtype = _complex_of(diag.dtype)
    # PyTorch's gradient of a complex output is dL/dRe + i dL/dIm; its conjugate w makes
    # dL = Re(sum_i w_i dg_i), the holomorphic form the adjoint recurrences use.
    w = torch.view_as_complex(grad.reshape(a.shape + (2,)).contiguous()).conj()
    g = torch.view_as_complex(out.reshape(a.shape + (2,)).contiguous())
    if causal:
        lam_d = backend.causal_backward(g, b, w.to(cdtype), cdtype)
        g_off = -lam_d[:, 1:] * g[:, :-1]  # dL/dc_k: c_k enters only the denominator of g_{k+1}
    else:
        gl = backend.causal_forward(a, b, zr, zi, torch.complex128)
        gr = backend.causal_forward(a.flip(-1), b.flip(-1), zr, zi, torch.complex128).flip(-1)
        c = b.double() ** 2
        nu = -w.to(torch.complex128) * g.to(torch.complex128) ** 2  # dL/dE_i, E_i = 1 / G_i
        w_left = torch.nn.functional.pad(-c * nu[:, 1:], (0, 1))  # E_{i+1} holds -c_i gL_i
        w_right = torch.nn.functional.pad(-c * nu[:, :-1], (1, 0))  # E_{i-1} holds -c_{i-1} gR_i
        lam_l = backend.causal_backward(gl, b, w_left, torch.complex128)
        lam_r = backend.causal_backward(gr.flip(-1), b.flip(-1), w_right.flip(-1), torch.complex128).flip(-1)
        lam_d = nu + lam_l + lam_r
        g_off = -(nu[:, 1:] + lam_l[:, 1:]) * gl[:, :-1] - (nu[:, :-1] + lam_r[:, :-1]) * gr[:, 1:]
    real = diag.dtype
    grad_diag = lam_d.real.to(real).reshape(diag.shape)
    grad_off = (2 * b * g_off.real.to(real)).reshape(off.shape)
    sums = lam_d.sum(-1)  # d = diag - z, so z's gradient is minus the sum over positions
    grad_zr = (-sums.real).to(real).reshape(z_re.shape)
    grad_zi = sums.imag.to(real).reshape(z_im.shape)
    return grad_diag, grad_off, grad_zr, grad_zi


# --------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mkeval_bk::resolvent_diagonal", mutates_args=())
def resolvent_diagonal_op(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor, causal: bool) -> Tensor:
    """The resolvent diagonal as ``[..., N, 2]`` (real, imaginary); see ``resolvent_diagonal``."""
    _check_shapes(diag, off, z_re, z_im)
    backend = _backend(diag.device)
    if causal and diag.numel() and hasattr(backend, "op_forward"):
        # a fused backend checks the values itself, and returns None if one is bad
        out = backend.op_forward(diag, off, z_re, z_im)
        if out is None:
            _check_values(diag, off, z_re, z_im)  # raises, naming the first bad entry
            raise RuntimeError(f"the {backend_name(diag.device)} backend refused inputs that pass the value checks")
        return out
    _check_values(diag, off, z_re, z_im)
    if diag.numel() == 0:
        return diag.new_zeros(diag.shape + (2,))
    g = _forward(diag, off, z_re, z_im, causal)
    return torch.view_as_real(g).reshape(diag.shape + (2,)).contiguous()  # the fake kernel's layout


@resolvent_diagonal_op.register_fake
def _(diag, off, z_re, z_im, causal):
    _check_shapes(diag, off, z_re, z_im)
    return diag.new_empty(diag.shape + (2,))


@torch.library.custom_op("mkeval_bk::resolvent_diagonal_backward", mutates_args=())
def resolvent_diagonal_backward_op(
    grad: Tensor, out: Tensor, diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor, causal: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``resolvent_diagonal_op`` with respect to ``diag, off, z_re, z_im``."""
    if diag.numel() == 0:
        return torch.zeros_like(diag), torch.zeros_like(off), torch.zeros_like(z_re), torch.zeros_like(z_im)
    backend = _backend(diag.device)
    if causal and hasattr(backend, "op_backward"):
        return backend.op_backward(grad, out, diag, off, z_re, z_im)
    return tuple(t.contiguous() for t in _backward(grad, out, diag, off, z_re, z_im, causal))


@resolvent_diagonal_backward_op.register_fake
def _(grad, out, diag, off, z_re, z_im, causal):
    return diag.new_empty(diag.shape), off.new_empty(off.shape), z_re.new_empty(z_re.shape), z_im.new_empty(z_im.shape)


def _setup_context(ctx, inputs, output):
    diag, off, z_re, z_im, causal = inputs
    ctx.save_for_backward(diag, off, z_re, z_im, output)
    ctx.causal = causal


def _autograd_backward(ctx, grad):
    diag, off, z_re, z_im, out = ctx.saved_tensors
    grads = torch.ops.mkeval_bk.resolvent_diagonal_backward(grad, out, diag, off, z_re, z_im, ctx.causal)
    return (*grads, None)


resolvent_diagonal_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public function
def _split_z(z: Any, diag: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(z, Tensor):
        if not z.is_complex():
            raise ValueError(f"z must be complex with Im z > 0, got a real {z.dtype} tensor (Im z = 0)")
        return z.real.to(diag.dtype), z.imag.to(diag.dtype)
    if isinstance(z, (complex, float, int)) and not isinstance(z, bool):
        z = complex(z)
        if not (math.isfinite(z.real) and math.isfinite(z.imag)):
            raise ValueError(f"z must be finite, got {z}")
        if z.imag <= 0:
            raise ValueError(f"z must have Im z > 0 (the resolvent is taken above the real axis), got z = {z}")
        return (
            torch.tensor(z.real, dtype=diag.dtype, device=diag.device),
            torch.tensor(z.imag, dtype=diag.dtype, device=diag.device),
        )
    raise ValueError(f"z must be a complex number or a complex tensor, got {type(z).__name__}")


def resolvent_diagonal(diag: Tensor, off: Tensor, z: complex | Tensor, causal: bool = True) -> Tensor:
    """The diagonal of ``(H - z)^-1`` for tridiagonal ``H`` (diagonal ``diag``, symmetric
    off-diagonals ``off``), as a complex ``[..., N]`` tensor.

    ``diag``: real ``[..., N]``; ``off``: real ``[..., N-1]``; ``z``: complex number or
    complex tensor with ``Im z > 0``. Batch dimensions of the three broadcast. ``causal=True``
    gives, at ``i``, the diagonal entry of the inverse of the leading ``(i+1) x (i+1)`` block
    (it depends on positions ``0..i`` only); ``causal=False`` the diagonal of the full inverse.
    Differentiable in ``diag``, ``off`` and ``z``; raises ValueError on bad input.
    """
    _check_tensors(diag, off)
    z_re, z_im = _split_z(z, diag)
    return torch.view_as_complex(_call(diag, off, z_re, z_im, causal))


def resolvent_diagonal_real(
    diag: Tensor, off: Tensor, z_re: Tensor | float, z_im: Tensor | float, causal: bool = True
) -> Tensor:
    """``resolvent_diagonal`` with ``z`` given as its real and imaginary parts, returning
    ``[..., N, 2]`` (real, imaginary): no complex tensors, for models under ``torch.compile``."""
    _check_tensors(diag, off)
    z_re, z_im = (torch.as_tensor(t, dtype=diag.dtype, device=diag.device) for t in (z_re, z_im))
    if z_re.is_complex() or z_im.is_complex():
        raise ValueError("z_re and z_im must be real")
    return _call(diag, off, z_re, z_im, causal)


def _check_tensors(diag: Tensor, off: Tensor) -> None:
    if not isinstance(diag, Tensor) or not isinstance(off, Tensor):
        raise ValueError(f"diag and off must be tensors, got {type(diag).__name__} and {type(off).__name__}")
    if diag.dim() < 1:
        raise ValueError("diag must have shape [..., N], got a 0-d tensor")
    if off.dim() < 1 or off.shape[-1] != diag.shape[-1] - 1:
        raise ValueError(
            f"off must have shape [..., N-1] = [..., {diag.shape[-1] - 1}] for diag of length N = {diag.shape[-1]}, "
            f"got {tuple(off.shape)}"
        )


def _call(diag: Tensor, off: Tensor, z_re: Tensor, z_im: Tensor, causal: bool) -> Tensor:
    try:
        batch = diag.shape[:-1]
        if off.shape[:-1] != batch or any(t.shape not in ((), batch) for t in (z_re, z_im)):
            batch = torch.broadcast_shapes(batch, off.shape[:-1], z_re.shape, z_im.shape)  # ~20 us: not always
    except RuntimeError as exc:
        raise ValueError(
            f"batch shapes do not broadcast: diag {tuple(diag.shape[:-1])}, off {tuple(off.shape[:-1])}, "
            f"z {tuple(z_re.shape)}"
        ) from exc
    n = diag.shape[-1]
    # expand only what needs it: an expand of a tensor that requires grad is a node in the
    # autograd graph, a few microseconds each way when the op itself takes tens
    return torch.ops.mkeval_bk.resolvent_diagonal(
        diag if diag.shape[:-1] == batch else diag.expand(batch + (n,)),
        off if off.shape[:-1] == batch else off.expand(batch + (n - 1,)),
        z_re if z_re.shape == batch else z_re.expand(batch),
        z_im if z_im.shape == batch else z_im.expand(batch),
        causal,
    )


# --------------------------------------------------------------------------- FLOP formulas
# Real floating-point operations per position of one system, counted on the sequential
# recursion (the chunked scans do more, as a blocked matmul does; this counts the maths):
# forward: d = a - Re z (1), c = b^2 (1), c g (2), d - c g (2), 1 / x (3 + 2) = 11.
CAUSAL_FORWARD_FLOPS = 11
# two causal passes, then E = d - c gL - c gR (2 + 2 + 4) and 1 / E (5)
FULL_FORWARD_FLOPS = 2 * CAUSAL_FORWARD_FLOPS + 13
# m = c g^2 (4 + 2), lam = w + m lam (6 + 2), Lambda = -lam g^2 (6 + 1), dL/db (5), sums (2)
CAUSAL_BACKWARD_FLOPS = 28
# recomputed forward passes, nu = -w G^2 (11), the two seeds (4), two causal adjoints, assembly (20)
FULL_BACKWARD_FLOPS = 2 * CAUSAL_FORWARD_FLOPS + 11 + 4 + 2 * CAUSAL_BACKWARD_FLOPS + 20


def resolvent_diagonal_flops(diag_shape, off_shape, z_re_shape, z_im_shape, causal, *args, out_shape=None, **kwargs) -> int:
    """FLOP formula of ``mkeval_bk::resolvent_diagonal`` (``torch.utils.flop_counter`` convention)."""
    return math.prod(diag_shape) * (CAUSAL_FORWARD_FLOPS if causal else FULL_FORWARD_FLOPS)


def resolvent_diagonal_backward_flops(
    grad_shape, out_shape_, diag_shape, off_shape, z_re_shape, z_im_shape, causal, *args, out_shape=None, **kwargs
) -> int:
    """FLOP formula of ``mkeval_bk::resolvent_diagonal_backward``."""
    return math.prod(diag_shape) * (CAUSAL_BACKWARD_FLOPS if causal else FULL_BACKWARD_FLOPS)


FLOP_FORMULAS = {
    torch.ops.mkeval_bk.resolvent_diagonal: resolvent_diagonal_flops,
    torch.ops.mkeval_bk.resolvent_diagonal_backward: resolvent_diagonal_backward_flops,
}
