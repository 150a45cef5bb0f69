"""The BK resolvent-diagonal op against independent references.

References: a dense complex128 ``torch.linalg.inv`` (all entries, N <= 64); LAPACK's banded
LU (``scipy.linalg.solve_banded``, partial pivoting, complex128) at sampled positions for
N up to 8192; the float64 per-position loop of ``reference.py`` for every entry at large N
(it is itself checked against the dense inverse here); and autograd through that loop for
gradients, which checks the hand-derived adjoint without using it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.utils.flop_counter import FlopCounterMode

import mkeval_bk
from mkeval_bk.ops import BackendUnavailable, forced_backend, op, reference, resolvent_diagonal, resolvent_diagonal_real

NUMBA = importlib.util.find_spec("numba") is not None
# every backend that runs on CPU tensors without the Triton interpreter
_COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(not NUMBA, reason="numba not installed"))
FAST = ("reference", "cpu", _COMPILED)  # every backend that runs on CPU tensors without Triton's interpreter
DEFAULTS = ("cpu", _COMPILED)  # the CPU defaults (with and without numba), for the long sequences


def _system(batch, n, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    diag = (scale * torch.randn(*batch, n, generator=gen, dtype=torch.float64)).to(dtype)
    off = torch.randn(*batch, n - 1, generator=gen, dtype=torch.float64).to(dtype)
    return diag, off


def _rel(x, ref):
    return ((x.to(torch.complex128) - ref).abs() / ref.abs()).max().item()


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_matches_dense_inverse(backend, causal, n):
    diag, off = _system((3,), n)
    z = complex(-0.4, 0.3)
    with forced_backend(backend):
        g = resolvent_diagonal(diag, off, z, causal=causal)
    assert g.dtype == torch.complex128 and g.shape == (3, n) and g.is_contiguous()  # as the fake kernel says
    dense = torch.stack([reference.resolvent_diagonal_dense(diag[i], off[i], z, causal) for i in range(3)])
    assert _rel(g, dense) < 1e-12


def _banded(diag, off, z):
    """LAPACK banded storage of H - z (complex128), for scipy.linalg.solve_banded."""
    n = len(diag)
    ab = np.zeros((3, n), dtype=np.complex128)
    ab[0, 1:] = off
    ab[1] = diag - z
    ab[2, :-1] = off
    return ab


@pytest.mark.parametrize("backend", DEFAULTS)
@pytest.mark.parametrize("z", [complex(-1.0, 0.5), complex(0.3, 0.05)])
@pytest.mark.parametrize("n", [1024, 8192])
def test_complex64_within_1e5_of_complex128(n, z, backend):
    """float32 inputs -> complex64 output within 1e-5 (elementwise, relative) of exact complex128."""
    diag, off = _system((2,), n, dtype=torch.float32, seed=n, scale=2.0)
    diag = diag - 2.0  # a random potential on the discrete Laplacian's diagonal
    exact_in = diag.double(), off.double()  # the op is judged on its own inputs, as rounded
    rng = np.random.default_rng(0)
    for causal in (True, False):
        with forced_backend(backend):
            g = resolvent_diagonal(diag, off, z, causal=causal)
        assert g.dtype == torch.complex64
        # every entry against the float64 loop (validated against the dense inverse above) ...
        loop = reference.resolvent_diagonal_loop(*exact_in, z, causal=causal)
        assert _rel(g, loop) < 1e-5
        # ... and sampled entries against banded LU, which shares nothing with the recursion
        d0, o0 = exact_in[0][0].numpy(), exact_in[1][0].numpy()
        picks = np.unique(np.concatenate([[0, 1, n - 2, n - 1], rng.integers(0, n, 48)]))
        if causal:
            exact = [scipy.linalg.solve_banded((1, 1), _banded(d0[: i + 1], o0[:i], z), np.eye(i + 1, 1, -i, dtype=np.complex128))[i, 0] for i in picks]
        else:
            cols = scipy.linalg.solve_banded((1, 1), _banded(d0, o0, z), np.eye(n, dtype=np.complex128)[:, picks])
            exact = cols[picks, np.arange(len(picks))]
        assert _rel(g[0, picks], torch.from_numpy(np.asarray(exact))) < 1e-5


@pytest.mark.parametrize("backend", DEFAULTS)
def test_no_overflow_far_past_n_1000(backend):
    """The published theta recursion overflowed to zeros past N ~ 1000; this one stays exact."""
    diag, off = _system((2,), 20000, seed=3, scale=5.0)
    z = complex(0.0, 0.1)
    with forced_backend(backend):
        g = resolvent_diagonal(diag.float(), off.float(), z)
    assert torch.isfinite(torch.view_as_real(g)).all()
    assert (g.abs() <= 1 / z.imag * (1 + 1e-6)).all()  # |g| <= 1 / Im z at every length
    assert _rel(g, reference.resolvent_diagonal_loop(diag.float().double(), off.float().double(), z)) < 1e-5


@pytest.mark.parametrize("backend", FAST)
def test_last_causal_entry_is_last_full_entry(backend):
    diag, off = _system((4,), 300)
    with forced_backend(backend):
        g_causal = resolvent_diagonal(diag, off, 0.5j)
        g_full = resolvent_diagonal(diag, off, 0.5j, causal=False)
    assert _rel(g_causal[:, -1], g_full[:, -1].to(torch.complex128)) < 1e-12
    assert not torch.allclose(g_causal[:, 0], g_full[:, 0])


@pytest.mark.parametrize("backend", FAST)
def test_broadcasting_and_per_system_z(backend):
    diag, off = _system((2, 3), 50)
    z = torch.complex(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64))
    with forced_backend(backend):
        g = resolvent_diagonal(diag, off[0], z)  # off shared over the first batch dimension
    for i in range(2):
        for c in range(3):
            ref = reference.resolvent_diagonal_dense(diag[i, c], off[0, c], complex(z[c]), True)
            assert _rel(g[i, c], ref) < 1e-12


# --------------------------------------------------------------------------- causality
@pytest.mark.parametrize("causal_backend", FAST)
def test_causal_outputs_are_bit_identical_when_later_positions_change(causal_backend):
    n = 200  # not a multiple of the cpu path's chunk length
    diag, off = _system((4,), n, dtype=torch.float32)
    with forced_backend(causal_backend):
        base = resolvent_diagonal(diag, off, complex(-1.0, 0.3))
        for t in [0, 9, 10, 11, 99, 150, n - 2]:  # around chunk edges and at the ends
            d2, o2 = diag.clone(), off.clone()
            d2[:, t + 1] += 1.0
            o2[:, t] += 0.5  # the coupling between t and t+1 enters only at t+1
            out = resolvent_diagonal(d2, o2, complex(-1.0, 0.3))
            assert torch.equal(out[:, : t + 1], base[:, : t + 1])
            assert not torch.equal(out[:, t + 1], base[:, t + 1])


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("n", [1, 2, 33])
def test_gradcheck_float64(backend, causal, n):
    diag, off = _system((2,), n, seed=n)
    zr = torch.tensor([-0.5, 0.7], dtype=torch.float64)
    zi = torch.tensor([0.4, 0.9], dtype=torch.float64)
    inputs = tuple(t.clone().requires_grad_() for t in (diag, off, zr, zi))

    def f(d, o, r, i):
        return torch.view_as_real(resolvent_diagonal(d, o, torch.complex(r, i), causal=causal))

    with forced_backend(backend):
        assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("backend", DEFAULTS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_autograd_through_the_loop(dtype, causal, backend):
    diag, off = _system((3,), 300, dtype=dtype, seed=1)
    z = torch.complex(torch.tensor(-0.3, dtype=dtype), torch.tensor(0.4, dtype=dtype))
    weights = torch.randn(3, 300, 2, generator=torch.Generator().manual_seed(5), dtype=dtype)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (diag, off, z.real, z.imag)]
        out = torch.view_as_real(fn(leaves[0], leaves[1], torch.complex(leaves[2], leaves[3]), causal))
        (out * weights).sum().backward()
        return [t.grad for t in leaves]

    with forced_backend(backend):
        ours = grads(resolvent_diagonal)
    theirs = grads(reference.resolvent_diagonal_loop)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.parametrize("backend", FAST)
def test_gradients_of_broadcast_and_strided_inputs_match_autograd_through_the_loop(backend):
    # off shared over the batch, z per channel, diag a transposed (non-contiguous) view: the op
    # sees expanded and strided tensors, and autograd sums the gradients of the expanded ones
    d_t, off = _system((3, 2), 40, seed=3)
    diag = d_t.transpose(0, 1)  # [2, 3, 40], not contiguous
    off = off[:, 0]  # [3, 39], broadcast over the first dimension
    zr = torch.tensor([-0.5, 0.1, 0.8], dtype=torch.float64)
    zi = torch.tensor([0.3, 0.6, 1.2], dtype=torch.float64)
    weights = torch.randn(2, 3, 40, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def grads(fn, *inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        d = leaves[0].transpose(0, 1)
        o = leaves[1] if fn is resolvent_diagonal else leaves[1].expand(2, 3, 39)
        z = torch.complex(leaves[2], leaves[3])
        (torch.view_as_real(fn(d, o, z if fn is resolvent_diagonal else z.expand(2, 3), True)) * weights).sum().backward()
        return [t.grad for t in leaves]

    assert not diag.is_contiguous()
    with forced_backend(backend):
        ours = grads(resolvent_diagonal, d_t, off, zr, zi)
    theirs = grads(reference.resolvent_diagonal_loop, d_t, off, zr, zi)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * b.abs().max().item())


# --------------------------------------------------------------------------- triton (interpreter)
# triton.jit chooses interpreter or compiler when it decorates, triton's own library included,
# so TRITON_INTERPRET=1 must be set before triton is imported: these tests run in a fresh
# interpreter (test_triton_kernels_under_the_interpreter), or directly when CI sets the variable.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
under_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="run in a subprocess with TRITON_INTERPRET=1 by test_triton_kernels_under_the_interpreter"
)


def test_triton_kernels_under_the_interpreter():
    if INTERPRETER:
        pytest.skip("this process already runs the interpreter tests directly")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("MKEVAL_BK_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-k", "triton_interp", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]


@under_interpreter
@pytest.mark.parametrize("layout", ["positions", "systems"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_interp_matches_reference(dtype, causal, layout, monkeypatch):
    from mkeval_bk.ops import triton_kernels

    monkeypatch.setenv(triton_kernels.LAYOUT_ENV, layout)
    n = 40  # chunks of 16: three chunks, the last one partial
    diag, off = _system((3,), n, dtype=dtype, seed=2)
    z = torch.complex(torch.tensor([-1.0, 0.2, 0.5], dtype=dtype), torch.tensor([0.3, 0.05, 1.0], dtype=dtype))
    weights = torch.randn(3, n, 2, generator=torch.Generator().manual_seed(6), dtype=dtype)

    def run(fn, cast):
        leaves = [cast(t).clone().requires_grad_() for t in (diag, off, z.real, z.imag)]
        out = torch.view_as_real(fn(leaves[0], leaves[1], torch.complex(leaves[2], leaves[3]), causal))
        (out * cast(weights)).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    assert triton_kernels.INTERPRETED and triton_kernels.chunk_length(n) == 16
    assert triton_kernels.chunk_length(1000) % triton_kernels.UNROLL == 0
    with forced_backend("triton"):
        ours = run(resolvent_diagonal, lambda t: t)
    exact = run(reference.resolvent_diagonal_loop, lambda t: t.double())  # float64 loop + autograd
    tol = 1e-11 if dtype == torch.float64 else 1e-5
    for a, b in zip(ours, exact):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item())


@under_interpreter
def test_triton_interp_layouts_agree_bit_for_bit(monkeypatch):
    """The two layouts run the same arithmetic in the same order: the same bits, forward and backward."""
    from mkeval_bk.ops import triton_kernels

    diag, off = _system((37,), 45, dtype=torch.float32, seed=5)  # 37 systems: two blocks in the systems layout
    weights = torch.randn(37, 45, 2, generator=torch.Generator().manual_seed(3))
    results = []
    for layout in triton_kernels.LAYOUTS:
        monkeypatch.setenv(triton_kernels.LAYOUT_ENV, layout)
        d, o = diag.clone().requires_grad_(), off.clone().requires_grad_()
        with forced_backend("triton"):
            out = resolvent_diagonal_real(d, o, -0.5, 0.2)
            (out * weights).sum().backward()
        results.append((out.detach(), d.grad, o.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@under_interpreter
def test_triton_interp_gradcheck():
    diag, off = _system((2,), 18, seed=4)  # two chunks
    inputs = tuple(t.clone().requires_grad_() for t in (diag, off, torch.tensor([0.1, -0.2], dtype=torch.float64)))

    def f(d, o, r):
        return resolvent_diagonal_real(d, o, r, torch.tensor(0.6, dtype=torch.float64))

    with forced_backend("triton"):
        assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


@under_interpreter
@pytest.mark.parametrize("layout", ["positions", "systems"])
def test_triton_interp_is_causal_bit_for_bit(layout, monkeypatch):
    from mkeval_bk.ops import triton_kernels

    monkeypatch.setenv(triton_kernels.LAYOUT_ENV, layout)
    diag, off = _system((2,), 40, dtype=torch.float32)
    with forced_backend("triton"):
        base = resolvent_diagonal(diag, off, 0.4j)
        d2 = diag.clone()
        d2[:, 17] = 3.0
        out = resolvent_diagonal(d2, off, 0.4j)
    assert torch.equal(out[:, :17], base[:, :17]) and not torch.equal(out[:, 17], base[:, 17])


@pytest.mark.skipif(INTERPRETER, reason="needs a process without TRITON_INTERPRET")
def test_triton_on_cpu_without_interpreter_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("MKEVAL_BK_BACKEND", "triton")
    diag, off = _system((1,), 8)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        resolvent_diagonal(diag, off, 0.5j)


def test_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv("MKEVAL_BK_BACKEND", "fortran")
    diag, off = _system((1,), 8)
    with pytest.raises(BackendUnavailable, match="'fortran'.*reference, cpu, compiled, triton"):
        resolvent_diagonal(diag, off, 0.5j)


def test_env_var_forces_the_backend(monkeypatch):
    diag, off = _system((2,), 50)
    monkeypatch.setenv("MKEVAL_BK_BACKEND", "reference")
    assert mkeval_bk.backend_name(diag.device) == "reference"
    ref = resolvent_diagonal(diag, off, 0.5j)
    monkeypatch.delenv("MKEVAL_BK_BACKEND")
    assert mkeval_bk.backend_name(diag.device) == ("compiled" if NUMBA else "cpu")
    assert _rel(resolvent_diagonal(diag, off, 0.5j), ref) < 1e-13
    monkeypatch.setenv("MKEVAL_BK_BACKEND", "cpu")  # the chunked PyTorch scan stays selectable
    assert mkeval_bk.backend_name(diag.device) == "cpu"
    assert _rel(resolvent_diagonal(diag, off, 0.5j), ref) < 1e-13


def test_without_numba_the_cpu_default_is_the_chunked_scan(monkeypatch):
    monkeypatch.delenv("MKEVAL_BK_BACKEND", raising=False)
    monkeypatch.setattr(op, "_numba_installed", lambda: False)
    assert mkeval_bk.backend_name(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(not NUMBA, reason="numba not installed")
@pytest.mark.parametrize("causal", [True, False])
def test_compiled_work_shared_among_threads_is_bit_identical(monkeypatch, causal):
    """The same systems through the shared-work path (two threads, pieces of one group) and
    through one thread give the same bits, forward and backward."""
    from mkeval_bk.ops import compiled

    diag, off = _system((3, 7), 97, dtype=torch.float32, seed=7)  # 21 systems: 5 groups of 4 and one of 1
    weights = torch.randn(3, 7, 97, 2, generator=torch.Generator().manual_seed(8))

    def run():
        leaves = [t.clone().requires_grad_() for t in (diag, off)]
        with forced_backend("compiled"):
            out = resolvent_diagonal_real(leaves[0], leaves[1], -0.2, 0.3, causal=causal)
        (out * weights).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    alone = run()
    calls = []
    share = compiled.share_work
    monkeypatch.setattr(compiled, "share_work", lambda *a: calls.append(a[1:]) or share(*a))
    monkeypatch.setattr(compiled, "PARALLEL_MIN_POSITIONS", 0)
    monkeypatch.setattr(compiled, "threads", lambda: 2)
    monkeypatch.setattr(compiled, "PIECES_PER_THREAD", 3)  # 6 groups in pieces of one
    shared = run()
    assert calls and all(c == (6, 2, 1) for c in calls)
    for a, b in zip(alone, shared):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- compile, FLOPs
def test_torch_compile_round_trip():
    """fullgraph: the custom op and its autograd trace without graph breaks; results match eager."""
    torch._dynamo.reset()

    def f(v, o, zr, zi_raw):
        g = resolvent_diagonal_real(v - 2.0, o, zr, 0.01 + torch.nn.functional.softplus(zi_raw))
        return (g * g).sum(-1)

    diag, off = _system((2, 3), 40, dtype=torch.float32)
    leaves = [diag, off, torch.linspace(-1, 1, 3), torch.zeros(3)]

    def run(fn):
        xs = [t.clone().requires_grad_() for t in leaves]
        y = fn(*xs)
        y.sum().backward()
        return [y.detach()] + [x.grad for x in xs]

    compiled = run(torch.compile(f, fullgraph=True))
    eager = run(f)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", DEFAULTS)
def test_flop_formula_counts_forward_and_backward(backend):
    diag, off = _system((4, 2), 100, dtype=torch.float32)
    diag.requires_grad_()
    with forced_backend(backend), FlopCounterMode(display=False, custom_mapping=op.FLOP_FORMULAS) as counter:
        out = resolvent_diagonal_real(diag, off, 0.0, 0.5)
        out.sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.mkeval_bk.resolvent_diagonal] == 800 * op.CAUSAL_FORWARD_FLOPS
    assert counts[torch.ops.mkeval_bk.resolvent_diagonal_backward] == 800 * op.CAUSAL_BACKWARD_FLOPS


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "z, match",
    [
        (complex(1.0, 0.0), "Im z > 0"),
        (complex(1.0, -0.5), "Im z > 0"),
        (0.5, "Im z > 0"),
        (complex(math.nan, 1.0), "finite"),
        (torch.tensor([0.5, 1.0]), "complex"),
        (torch.complex(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.0])), r"Im z has 1 non-positive value\(s\), the first at index \(1,\)"),
        ("0.5j", "complex number or a complex tensor"),
    ],
)
def test_bad_z_raises(z, match):
    diag, off = _system((2,), 8, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        resolvent_diagonal(diag, off, z)


def test_nonpositive_im_z_in_parts_raises():
    diag, off = _system((2,), 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="Im z has 1 non-positive"):
        resolvent_diagonal_real(diag, off, 0.0, torch.tensor([0.3, -0.1]))


@pytest.mark.parametrize("where", ["diag", "off"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_potential_raises(where, bad):
    diag, off = _system((2,), 8, dtype=torch.float32)
    (diag if where == "diag" else off)[1, 3] = bad
    with pytest.raises(ValueError, match=rf"{where} .*1 non-finite value\(s\), the first at index \(1, 3\)"):
        resolvent_diagonal(diag, off, 0.5j)


@pytest.mark.parametrize(
    "diag_shape, off_shape, match",
    [
        ((2, 8), (2, 8), r"off must have shape \[..., N-1\] = \[..., 7\]"),
        ((2, 8), (3, 7), "batch shapes do not broadcast"),
        ((), (0,), "diag must have shape"),
    ],
)
def test_mismatched_shapes_raise(diag_shape, off_shape, match):
    with pytest.raises(ValueError, match=match):
        resolvent_diagonal(torch.zeros(diag_shape), torch.zeros(off_shape), 0.5j)


@pytest.mark.parametrize(
    "diag, off, match",
    [
        (torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 3), "diag must be a real float32 or float64"),
        (torch.zeros(2, 4, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.float16), r"\.float\(\)"),
        (torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.float64), "same dtype"),
        (torch.zeros(2, 4, dtype=torch.complex64), torch.zeros(2, 3), "diag must be a real"),
    ],
)
def test_bad_dtypes_raise(diag, off, match):
    with pytest.raises(ValueError, match=match):
        resolvent_diagonal(diag, off, 0.5j)


# --------------------------------------------------------------------------- benchmark
def test_bench_rows_and_ratios():
    from mkeval_bk.bench import run

    result = run(seq_lens=[64, 128], batch_size=2, repeats=1, models=["cpu"], neighbour=False, first_use=False)
    assert {(r["backend"], r["N"]) for r in result.rows} == {(b, n) for b in ("loop", "cpu") for n in (64, 128)}
    for row in result.rows:
        assert set(result.columns) <= set(row)
        assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["fwd_iqr_ms"] >= 0 and row["fwd_bwd_iqr_ms"] >= 0
        assert row["speedup_fwd"] > 0 and row["speedup_fwd_bwd"] > 0
        assert row["fwd_bwd_vs_loop_fwd"] == pytest.approx(
            next(r["fwd_ms"] for r in result.rows if r["backend"] == "loop" and r["N"] == row["N"]) / row["fwd_bwd_ms"]
        )
    loop = [r for r in result.rows if r["backend"] == "loop"]
    assert all(r["speedup_fwd"] == 1.0 for r in loop)
    assert result.meta["threads"] == result.rows[0]["threads"] >= 1
    assert "torch.utils.benchmark" in result.meta["timer"]


def test_bench_times_backends_in_turns(monkeypatch):
    """On CPU the callables of one length take turns, round after round with the order rotated,
    so that a drifting machine slows each alike; each gets one sample per round, merged."""
    import torch.utils.benchmark
    from torch.utils.benchmark.utils.common import Measurement, TaskSpec

    from mkeval_bk.bench import SECONDS_PER_REPEAT, time_in_turns

    order = []

    class OneCallTimer:
        def __init__(self, stmt, globals, num_threads):
            self.fn = globals["fn"]

        def blocked_autorange(self, min_run_time):
            assert min_run_time == SECONDS_PER_REPEAT
            self.fn()
            return Measurement(2, [0.001 * len(order)], TaskSpec("fn()", "pass"))  # a block of 2 calls

    monkeypatch.setattr(torch.utils.benchmark, "Timer", OneCallTimer)
    timings = time_in_turns({name: (lambda name=name: order.append(name)) for name in "abc"}, repeats=3)
    assert order == list("abc") + list("bca") + list("cab")
    # the fake clock: a's samples were taken as calls 1, 6 and 8 (ms per call: block time / 2)
    assert timings["a"].median_ms == pytest.approx(1e3 * 0.006 / 2) and timings["a"].calls == 6


@pytest.mark.skipif(not NUMBA, reason="numba not installed")
def test_bench_measures_first_use_and_a_busy_neighbour():
    """The CPU extras run and report (their values are timings, not checked here)."""
    from mkeval_bk.bench import run

    result = run(seq_lens=[2048], batch_size=1, repeats=1, models=["compiled"])
    busy = [r for r in result.rows if r["neighbour"] == "busy"]
    assert [r["backend"] for r in busy] == ["compiled"] and busy[0]["N"] == 2048
    assert result.meta["first_use_s"] > 0
    assert any("busy neighbour, compiled at N=2048" in note for note in result.notes)
    assert any("new process with the kernel cache warm" in note for note in result.notes)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", DEFAULTS)
def test_custom_ops_pass_opcheck_and_the_backward_op_takes_a_wider_gradient(backend, causal):
    # torch.library.opcheck: schema, fake kernels (shapes, strides, dtypes), autograd
    # registration and AOT dispatch, on broadcast (expanded) batch inputs as _call passes them
    diag, off = _system((2, 3), 20, dtype=torch.float32, seed=4)
    zr = torch.tensor([-0.5, 0.1, 0.8]).expand(2, 3)
    zi = torch.tensor([0.3, 0.6, 1.2]).expand(2, 3)
    grad = torch.randn(2, 3, 20, 2, generator=torch.Generator().manual_seed(8))
    with forced_backend(backend):
        torch.library.opcheck(
            torch.ops.mkeval_bk.resolvent_diagonal.default,
            (diag.requires_grad_(), off[0].expand(2, 3, 19).requires_grad_(), zr, zi, causal),
        )
        out = torch.ops.mkeval_bk.resolvent_diagonal(diag, off, zr, zi, causal)
        args = (out.detach(), diag.detach(), off, zr, zi, causal)
        torch.library.opcheck(torch.ops.mkeval_bk.resolvent_diagonal_backward.default, (grad, *args))
        narrow = torch.ops.mkeval_bk.resolvent_diagonal_backward(grad, *args)
        wide = torch.ops.mkeval_bk.resolvent_diagonal_backward(grad.double(), *args)  # float32 values, exact in float64
    for a, b, t in zip(narrow, wide, (diag, off, zr, zi)):
        assert a.shape == t.shape and a.dtype == torch.float32
        assert torch.equal(a, b)
