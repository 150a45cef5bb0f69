"""The readable spec of the BK resolvent diagonal: per-position loops and a dense inverse.

With ``d_i = diag_i - z`` and ``c_i = off_i ** 2``, the diagonal of the inverse of the
leading ``(i+1) x (i+1)`` block of ``H - z`` is the continued fraction (a Schur complement)

    g_0 = 1 / d_0,    g_i = 1 / (d_i - c_{i-1} g_{i-1}).

``Im d_i = -Im z < 0`` and ``Im g_{i-1} >= 0`` give ``|d_i - c_{i-1} g_{i-1}| >= Im z``, so
``|g_i| <= 1 / Im z`` at every length: nothing here can overflow. The diagonal of the full
inverse joins a forward fraction ``gL`` and a backward one ``gR``:

    G_i = 1 / (d_i - c_{i-1} gL_{i-1} - c_i gR_{i+1}).

The backward pass (``causal_backward``) is the adjoint of the forward recurrence, a
first-order linear recurrence run from the end::

    lam_i = w_i + c_i g_{i+1}^2 lam_{i+1},    Lambda_i = -lam_i g_i^2,

where ``w = conj(grad_g)`` and ``Lambda_i = dL/dd_i`` in the holomorphic sense (``dL =
Re(sum_i Lambda_i dd_i)``), so ``grad diag = Re Lambda``, ``grad Re z = -sum Re Lambda``,
``grad Im z = sum Im Lambda`` and ``grad off_k = Re(-2 off_k Lambda_{k+1} g_k)``.

Everything is written one position at a time so that it reads like the maths; it is slow
(one Python step per position) and is what the fast backends are tested against.
``resolvent_diagonal_loop`` is differentiable by plain autograd, so it checks the
hand-derived adjoint independently and is the "straightforward loop" of the benchmark.
"""

from __future__ import annotations

import torch


def _shifted(a: torch.Tensor, zr: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
    """``d = a - z`` as a complex tensor; ``zr``, ``zi`` have one entry per system."""
    return torch.complex(a - zr[..., None], (-zi[..., None]).expand_as(a))


def causal_forward(a: torch.Tensor, b: torch.Tensor, zr: torch.Tensor, zi: torch.Tensor) -> torch.Tensor:
    """``g`` (complex ``[..., N]``) from ``a [..., N]``, ``b [..., N-1]``, ``zr, zi [...]``."""
    d = _shifted(a, zr, zi).unbind(-1)  # unbind, not d[..., i]: its backward is one stack, not N
    c = (b * b).unbind(-1)
    gs = [1 / d[0]]
    for i in range(1, len(d)):
        gs.append(1 / (d[i] - c[i - 1] * gs[-1]))
    return torch.stack(gs, dim=-1)


def causal_backward(g: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``Lambda = dL/dd`` (complex ``[..., N]``) given ``g``, ``b`` and ``w = conj(grad_g)``."""
    c = b * b
    n = g.shape[-1]
    lam_d = torch.empty_like(g)
    lam = w[..., n - 1]
    lam_d[..., n - 1] = -lam * g[..., n - 1] ** 2
    for i in range(n - 2, -1, -1):
        lam = w[..., i] + c[..., i] * g[..., i + 1] ** 2 * lam
        lam_d[..., i] = -lam * g[..., i] ** 2
    return lam_d


def combine(d: torch.Tensor, c: torch.Tensor, gl: torch.Tensor, gr: torch.Tensor) -> torch.Tensor:
    """The full-inverse diagonal from the forward (``gl``) and backward (``gr``) fractions."""
    left = torch.nn.functional.pad(c * gl[..., :-1], (1, 0))
    right = torch.nn.functional.pad(c * gr[..., 1:], (0, 1))
    return 1 / (d - left - right)


def resolvent_diagonal_loop(
    diag: torch.Tensor, off: torch.Tensor, z: complex | torch.Tensor, causal: bool = True
) -> torch.Tensor:
    """The whole op as a per-position loop, differentiable by autograd (no checks on input)."""
    zt = torch.as_tensor(z, device=diag.device)
    batch = diag.shape[:-1]
    zr = zt.real.to(diag.dtype).expand(batch)
    zi = zt.imag.to(diag.dtype).expand(batch)
    gl = causal_forward(diag, off, zr, zi)
    if causal:
        return gl
    gr = causal_forward(diag.flip(-1), off.flip(-1), zr, zi).flip(-1)
    return combine(_shifted(diag, zr, zi), off * off, gl, gr)


def resolvent_diagonal_dense(
    diag: torch.Tensor, off: torch.Tensor, z: complex, causal: bool = True
) -> torch.Tensor:
    """The definition itself, in complex128 by dense inverses (1-D inputs, small N only)."""
    n = diag.shape[-1]
    t = torch.diag(diag.to(torch.complex128) - z)
    if n > 1:
        o = off.to(torch.complex128)
        t = t + torch.diag(o, 1) + torch.diag(o, -1)
    if not causal:
        return torch.linalg.inv(t).diagonal()
    return torch.stack([torch.linalg.inv(t[: i + 1, : i + 1])[i, i] for i in range(n)])
