"""The mamba plugin: model contract, mamba_ssm's initialisation, the scan against its sequential
reference, weight compatibility with transformers' MambaForCausalLM, backend selection, benchmark."""

import importlib.util
import logging
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import mkeval
from mkeval import UsageError
from mkeval.engine.checks import check_model

import mkeval_mamba
from mkeval_mamba import backend as backends
from mkeval_mamba.model import MambaConfig
from mkeval_mamba.scan import numba_installed, selective_scan, selective_scan_ref

VOCAB = 37
_COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(not numba_installed(), reason="numba not installed"))
KERNELS = (_COMPILED, "torch")  # the selective scan's two O(L) kernels
DEFAULT_CPU_BACKEND = "compiled" if numba_installed() else "torch"


@pytest.fixture(autouse=True)
def one_thread():
    # These tests run many small ops; on a shared 2-core machine OpenMP's barriers stall
    # whenever another process holds the second core, so one thread is faster and steadier.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(seed=0, **options):
    torch.manual_seed(seed)
    return mkeval_mamba.build(vocab_size=VOCAB, max_seq_len=64, **options)


def non_embedding(model):
    return sum(p.numel() for p in model.parameters()) - model.backbone.embedding.weight.numel()


# --------------------------------------------------------------------------- contract
def test_registered_with_a_size_knob_and_the_benchmark(registry):
    spec = registry.get("model", "mamba")
    assert spec.size_knob == "d_model" and spec.default_size == "tiny" and spec.max_seq_len is None
    assert set(spec.sizes) == {"tiny", "small", "base"}
    assert registry.get("benchmark", "mamba-scan").run is mkeval_mamba.bench.run_scan_benchmark


@pytest.mark.parametrize("backend", [_COMPILED, "torch", "reference"])
def test_core_contract_checks_pass(registry, backend):
    results = check_model("mamba", registry=registry, backend=backend)
    assert [r.name for r in results if not r.passed] == [], [(r.name, r.detail) for r in results]


def test_logits_and_hidden_state_shapes():
    model = make().eval()
    ids = torch.randint(0, VOCAB, (2, 19))
    assert model(ids).shape == (2, 19, VOCAB)
    assert model.hidden_states(ids).shape == (2, 19, 64)
    assert model.backend == DEFAULT_CPU_BACKEND


@pytest.mark.parametrize("backend,chunk_size", [(b, c) for b in ("compiled", "torch") for c in (None, 4, 7)] + [("reference", None)])
def test_strictly_causal_at_every_chunk_boundary(backend, chunk_size):
    if backend == "compiled" and not numba_installed():
        pytest.skip("numba not installed")
    model = make(backend=backend, chunk_size=chunk_size).eval()
    length = 29
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids)
        for t in [0, 1, 3, 4, 5, 7, 8, 14, 16, 27, 28]:
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), f"token {t} changed earlier logits"
            assert not torch.equal(out[:, t], base[:, t])


def test_same_seed_same_weights_and_logits_other_seed_differs():
    ids = torch.randint(0, VOCAB, (2, 12))
    a, b, c = make(0).eval(), make(0).eval(), make(1).eval()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
        assert not torch.equal(a(ids), c(ids))


def test_every_parameter_gets_a_finite_nonzero_gradient():
    model = make().train()
    ids = torch.randint(0, VOCAB, (2, 21))
    logits = model(ids)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_state_dict_has_no_shared_tensors_and_round_trips_through_safetensors(tmp_path):
    import safetensors.torch

    model = make(0).eval()
    safetensors.torch.save_file(model.state_dict(), tmp_path / "m.safetensors")  # refuses shared tensors
    fresh = make(5).eval()
    fresh.load_state_dict(safetensors.torch.load_file(tmp_path / "m.safetensors"))
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), fresh(ids))


def test_output_head_is_the_embedding():
    model = make().eval()
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        expected = model.hidden_states(ids) @ model.backbone.embedding.weight.T
        assert torch.allclose(model(ids), expected, atol=1e-6)
    assert not any("lm_head" in name for name in model.state_dict())


# --------------------------------------------------------------------------- sizes and options
def test_size_knob_grows_non_embedding_parameters_strictly():
    counts = [non_embedding(make(d_model=d)) for d in range(8, 140, 4)]
    assert all(a < b for a, b in zip(counts, counts[1:]))


def test_builds_on_the_meta_device_with_the_same_count():
    # the core's --match-params bisects the knob on meta-device builds
    with torch.device("meta"):
        meta = mkeval_mamba.build(vocab_size=VOCAB, max_seq_len=64, d_model=65)
    assert meta.backbone.embedding.weight.is_meta
    assert non_embedding(meta) == non_embedding(make(d_model=65))


def test_presets_are_about_a_tenth_one_and_ten_million_parameters():
    assert non_embedding(make(size="tiny")) == pytest.approx(1e5, rel=0.1)
    assert non_embedding(make(size="small")) == pytest.approx(1e6, rel=0.1)
    base = MambaConfig(vocab_size=VOCAB, **mkeval_mamba.SIZES["base"])  # counted, not built (10M weights)
    assert base.n_layer * _per_layer_formula(base) + base.d_model == pytest.approx(1e7, rel=0.1)


def _per_layer_formula(c):
    """Non-embedding parameters of one Mamba layer, counted from the architecture by hand."""
    d, di, n, r, k = c.d_model, c.d_inner, c.d_state, c.resolved_dt_rank, c.d_conv
    return (d * 2 * di) + (di * k + di) + di * (r + 2 * n) + (r * di + di) + di * n + di + di * d + d


def test_parameter_count_matches_the_formula():
    model = make(d_model=48, n_layer=2)
    assert non_embedding(model) == 2 * _per_layer_formula(model.config) + 48


def test_knob_overrides_the_preset_and_defaults_follow_mamba_ssm():
    model = make(size="small", d_model=96)
    c = model.config
    assert (c.d_model, c.n_layer) == (96, mkeval_mamba.SIZES["small"]["n_layer"])
    assert (c.d_state, c.expand, c.d_conv, c.resolved_dt_rank) == (16, 2, 4, math.ceil(96 / 16))
    mixer = model.backbone.layers[0].mixer
    assert mixer.in_proj.weight.shape == (2 * 2 * 96, 96)
    assert mixer.x_proj.weight.shape == (c.resolved_dt_rank + 2 * 16, 2 * 96)
    assert mixer.conv1d.weight.shape == (2 * 96, 1, 4)
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None and mixer.conv1d.bias is not None


def test_unknown_option_or_size_is_a_usage_error():
    with pytest.raises(UsageError, match="did you mean 'd_model'"):
        make(d_modle=32)
    with pytest.raises(UsageError, match="sizes are tiny, small, base"):
        make(size="huge")


def test_builds_through_the_core_with_a_seed():
    a = mkeval.build_model("mamba", VOCAB, 32, seed=3, d_model=32)
    b = mkeval.build_model("mamba", VOCAB, 32, seed=3, d_model=32)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --------------------------------------------------------------------------- initialisation
def test_dt_is_log_uniform_in_its_range_through_the_inverse_softplus_bias():
    model = make(d_model=256, n_layer=2)
    dts = [F.softplus(layer.mixer.dt_proj.bias.detach().double()) for layer in model.backbone.layers]
    for dt in dts:
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert not torch.equal(dts[0], dts[1]), "every layer got the same dt initialisation"
    log_dt = torch.cat(dts).log().numpy()
    lo, hi = math.log(1e-3), math.log(0.1)
    assert scipy.stats.kstest(log_dt, "uniform", args=(lo, hi - lo)).pvalue > 0.01
    # the same test tells dt uniform in [1e-3, 0.1] (not log-uniform) apart
    uniform_dt = torch.rand(len(log_dt), generator=torch.Generator().manual_seed(0)) * (0.1 - 1e-3) + 1e-3
    assert scipy.stats.kstest(uniform_dt.log().numpy(), "uniform", args=(lo, hi - lo)).pvalue < 1e-6


def test_dt_proj_weight_is_uniform_within_dt_rank_to_the_minus_half():
    model = make(d_model=128)
    bound = math.ceil(128 / 16) ** -0.5
    for layer in model.backbone.layers:
        w = layer.mixer.dt_proj.weight.detach().abs()
        assert w.max() <= bound and w.max() > 0.95 * bound


def test_A_log_is_s4d_real_and_D_is_one():
    model = make(d_model=32, d_state=8)
    for layer in model.backbone.layers:
        expected = torch.log(torch.arange(1.0, 9.0)).expand(64, 8)
        assert torch.equal(layer.mixer.A_log.detach(), expected)
        assert torch.equal(layer.mixer.D.detach(), torch.ones(64))


@pytest.mark.parametrize("n_layer", [2, 8])
def test_out_proj_is_rescaled_by_the_number_of_layers_and_in_proj_is_not(n_layer):
    model = make(d_model=64, n_layer=n_layer)
    out_bound = 1 / math.sqrt(128) / math.sqrt(n_layer)  # kaiming_uniform(a=sqrt 5) on fan_in 128, / sqrt(n_layer)
    in_bound = 1 / math.sqrt(64)
    for layer in model.backbone.layers:
        out_w, in_w = layer.mixer.out_proj.weight.detach().abs(), layer.mixer.in_proj.weight.detach().abs()
        assert out_bound * 0.95 < out_w.max() <= out_bound
        assert in_bound * 0.95 < in_w.max() <= in_bound


def test_embedding_std_is_0_02_and_norms_start_at_one():
    model = make(d_model=128)
    assert model.backbone.embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    norms = [layer.norm.weight for layer in model.backbone.layers] + [model.backbone.norm_f.weight]
    assert all(torch.equal(w.detach(), torch.ones(128)) for w in norms)


def test_no_weight_decay_names_exactly_A_log_and_D():
    model = make(n_layer=3)
    expected = {f"backbone.layers.{i}.mixer.{p}" for i in range(3) for p in ("A_log", "D")}
    assert model.no_weight_decay() == expected
    assert expected <= dict(model.named_parameters()).keys()


# --------------------------------------------------------------------------- the scan
def scan_inputs(b, d, n, L, dtype=torch.float64, seed=0, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    u, delta, z = r(b, d, L), r(b, d, L) * dt_scale, r(b, d, L)
    A = -torch.exp(r(d, n))  # negative reals of different scales, as -exp(A_log)
    B, C, D, bias = r(b, n, L), r(b, n, L), r(d), r(d)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def grads(fn, inputs, kwargs):
    u, delta, A, B, C, D, z, bias = inputs
    out = fn(u, delta, A, B, C, D=kwargs.get("D", D), z=kwargs.get("z", z), delta_bias=kwargs.get("bias", bias),
             delta_softplus=kwargs.get("softplus", True), **kwargs.get("extra", {}))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(out.dtype)
    wanted = [t for t in inputs if t.requires_grad]
    return out, torch.autograd.grad((out * w).sum(), wanted, allow_unused=True)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(2, 5, 3, 1), (2, 5, 3, 37), (1, 4, 16, 64), (3, 2, 2, 100), (2, 19, 4, 30)])
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8, 1000])
def test_scan_matches_the_sequential_recurrence_in_float64(shape, chunk_size, kernel):
    inputs = scan_inputs(*shape)  # 19 channels: uneven channel groups in the compiled backward
    out_ref, g_ref = grads(selective_scan_ref, inputs, {})
    out, g = grads(selective_scan, inputs, {"extra": {"chunk_size": chunk_size, "kernel": kernel}})
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    for name, a, b in zip("u delta A B C D z bias".split(), g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("without", [("D", "z", "bias", "softplus"), ("D",), ("z",), ("bias",), ("softplus",)])
def test_scan_without_D_z_bias_or_softplus_matches_too(kernel, dtype, without):
    inputs = scan_inputs(2, 3, 4, 23, dtype=dtype)
    with torch.no_grad():
        inputs[1].abs_()  # delta used as dt directly must be >= 0
    kwargs = {name: (False if name == "softplus" else None) for name in without}
    out_ref, g_ref = grads(selective_scan_ref, [t.detach().double().requires_grad_() for t in inputs], kwargs)
    out, g = grads(selective_scan, inputs, {**kwargs, "extra": {"chunk_size": 5, "kernel": kernel}})
    assert out.dtype == dtype and all(t is None or t.dtype == dtype for t in g)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), out_ref, rtol=tol, atol=tol)
    for a, b in zip(g, g_ref):
        if b is None or a is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a.double(), b, rtol=100 * tol, atol=100 * tol * b.abs().max().item())


@pytest.mark.skipif(not numba_installed(), reason="numba not installed")
def test_compiled_work_shared_among_threads_is_bit_identical(monkeypatch):
    """The scan's and the conv's kernels through the shared-work path (two threads, small
    pieces) give the bits of one thread, forward and backward: every sum over channels has a
    fixed slot and order."""
    from mkeval_mamba import compiled, conv

    inputs = [t.detach().float() for t in scan_inputs(3, 200, 16, 40)]  # 4 blocks of 64 channels, 4 groups
    w = torch.randn(200, 4, generator=torch.Generator().manual_seed(3))

    def run():
        leaves = [t.clone().requires_grad_() for t in inputs + [w]]
        u, delta, A, B, C, D, z, bias, weight = leaves
        x = conv.causal_conv1d_silu(u, weight, bias)
        out = selective_scan(x, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, chunk_size=8,
                             kernel="compiled")
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
        return [out.detach()] + [t.grad for t in leaves]

    alone = run()
    calls = []
    share = compiled.share_work
    monkeypatch.setattr(compiled, "share_work", lambda *a: calls.append(a[1:]) or share(*a))
    monkeypatch.setattr(compiled, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(compiled, "PIECES_PER_THREAD", 6)  # 12 blocks (or groups) in pieces of one
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # the kernels share work among torch's intra-op threads
    try:
        shared = run()
    finally:
        torch.set_num_threads(previous)
    assert sorted(set(calls)) == [(12, 2, 1)] and len(calls) == 4  # scan and conv, forward and backward
    for a, b in zip(alone, shared):
        assert torch.equal(a, b)


@pytest.mark.skipif(not numba_installed(), reason="numba not installed")
@pytest.mark.parametrize("shape", [(2, 5, 9, 4), (3, 70, 200, 4), (1, 3, 2, 4), (2, 130, 67, 3), (1, 64, 150, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_conv_matches_torch_conv1d_and_silu_in_float64(shape, bias):
    """The compiled causal conv + SiLU against torch's padded conv1d and silu (conv.reference):
    outputs and the gradients of x, weight and bias. Shapes: padded channel blocks, sequences
    shorter than the kernel, several of the backward's time tiles, a width-1 kernel."""
    from mkeval_mamba import conv

    b, d, L, k = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, L, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d, k, generator=g, dtype=torch.float64, requires_grad=True)
    bb = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    wanted = [t for t in (x, w, bb) if t is not None]
    out, ref = conv.causal_conv1d_silu(x, w, bb), conv.reference(x, w, bb)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, e in zip(torch.autograd.grad((out * grad).sum(), wanted), torch.autograd.grad((ref * grad).sum(), wanted)):
        torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)
    # causal: changing the input at position p changes no output before p
    p = L // 2
    x2 = x.detach().clone()
    x2[:, :, p:] += 1.0
    assert torch.equal(conv.causal_conv1d_silu(x2, w, bb)[:, :, :p], out.detach()[:, :, :p])
    torch.library.opcheck(torch.ops.mkeval_mamba.causal_conv1d_silu.default, (x.detach().float(), w.detach().float(),
                                                                              None if bb is None else bb.detach().float()))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("optional", [True, False])
def test_scan_ops_fake_kernels_give_the_real_shapes_strides_and_dtypes(kernel, optional):
    """``torch.library.opcheck``: the fake kernels (used by torch.compile and FlopCounterMode's
    tracing) promise the real results' metadata, strides included, for both custom ops."""
    u, delta, A, B, C, D, z, bias = (t.detach().float() for t in scan_inputs(2, 70, 3, 9))  # 70: a padded block
    if not optional:
        D = z = bias = None
        delta = delta.abs()  # used as dt directly, without softplus: must be >= 0
    args = (u, delta, A, B, C, D, z, bias, optional, 4, kernel)
    torch.library.opcheck(torch.ops.mkeval_mamba.selective_scan.default, args)
    out, enter, y = torch.ops.mkeval_mamba.selective_scan(*args)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.mkeval_mamba.selective_scan_backward.default,
                          (grad, u, delta, A, B, C, D, z, bias, enter, y, optional, 4, kernel))


@pytest.mark.skipif(not numba_installed(), reason="numba not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_exp_is_within_one_ulp_of_the_rounded_exponential(dtype):
    """The compiled scan's own exp against numpy's (rounded from float64 for float32 inputs)."""
    from mkeval_mamba.compiled import exp_values

    lo, hi = (-110.0, 90.0) if dtype == np.float32 else (-750.0, 712.0)
    x = np.concatenate([np.linspace(lo, hi, 400_001), -20 * np.random.default_rng(0).random(10_000)]).astype(dtype)
    got = np.empty_like(x)
    exp_values(x, got)
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64)).astype(dtype)
    normal = np.isfinite(ref) & (ref >= np.finfo(dtype).tiny)
    ulps = np.abs(got[normal].astype(np.float64) - ref[normal]) / np.spacing(ref[normal]).astype(np.float64)
    assert ulps.max() <= 1.0
    small = np.isfinite(ref) & ~normal  # subnormal results, and zero, within one subnormal step
    assert np.abs(got[small].astype(np.float64) - ref[small]).max() <= np.finfo(dtype).smallest_subnormal
    assert np.array_equal(got[~np.isfinite(ref)], ref[~np.isfinite(ref)])  # overflow to inf
    specials = np.array([np.nan, np.inf, -np.inf, 0.0], dtype=dtype)
    out = np.empty_like(specials)
    exp_values(specials, out)
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0.0 and out[3] == 1.0


@pytest.mark.parametrize("kernel", KERNELS)
def test_scan_passes_gradcheck(kernel):
    inputs = scan_inputs(1, 2, 3, 11)
    assert torch.autograd.gradcheck(
        lambda *x: selective_scan(*x[:5], D=x[5], z=x[6], delta_bias=x[7], delta_softplus=True, chunk_size=3,
                                  kernel=kernel),
        inputs,
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dt_scale", [1.0, 6.0])
def test_scan_is_stable_and_exact_at_long_length(dt_scale, kernel):
    # L=4096, with dt from small to large (decays down to exp(-hundreds), far past float32's range).
    inputs = scan_inputs(1, 3, 4, 4096, dt_scale=dt_scale)
    out_ref, g_ref = grads(selective_scan_ref, inputs, {})
    out, g = grads(selective_scan, inputs, {"extra": {"kernel": kernel}})
    assert torch.isfinite(out).all() and all(torch.isfinite(t).all() for t in g)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # float32 against the float64 reference: rounding-level error, not growth with L
    out32 = selective_scan(*(t.detach().float() for t in inputs[:5]), D=inputs[5].detach().float(),
                           z=inputs[6].detach().float(), delta_bias=inputs[7].detach().float(), delta_softplus=True,
                           kernel=kernel)
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.double(), out_ref.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_scan_is_strictly_causal_bit_for_bit(kernel):
    inputs = [t.detach().float() for t in scan_inputs(2, 4, 5, 50)]
    u, delta, A, B, C, D, z, bias = inputs
    base = selective_scan(u, delta, A, B, C, D, z, bias, True, chunk_size=8, kernel=kernel)
    for t in [1, 7, 8, 9, 31, 49]:
        for which in (u, delta, B, C, z):
            saved = which[..., t].clone()
            which[..., t] += 1.0
            out = selective_scan(u, delta, A, B, C, D, z, bias, True, chunk_size=8, kernel=kernel)
            which[..., t] = saved
            assert torch.equal(out[..., :t], base[..., :t])


@pytest.mark.parametrize("kernel", KERNELS)
def test_scan_keeps_the_input_dtype_and_computes_in_float32(kernel):
    u, delta, A, B, C, D, z, bias = [t.detach().float() for t in scan_inputs(1, 3, 4, 20)]
    half = [t.bfloat16() for t in (u, delta)] + [A] + [t.bfloat16() for t in (B, C)] + [D, z.bfloat16(), bias, True]
    out16, ref16 = selective_scan(*half, kernel=kernel), selective_scan_ref(*half)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, ref16)


# --------------------------------------------------------------------------- FLOPs, compile
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("full", [True, False])
def test_scan_flop_formulas_match_the_hand_count(full, kernel):
    from torch.utils.flop_counter import FlopCounterMode

    from mkeval_mamba.scan import FLOP_FORMULAS

    b, d, n, L = 2, 3, 4, 9
    inputs = scan_inputs(b, d, n, L)
    kwargs = {} if full else {"D": None, "z": None, "bias": None, "softplus": False}
    kwargs["extra"] = {"kernel": kernel}
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        out, _ = grads(selective_scan, inputs, kwargs)
    counts = counter.get_flop_counts()["Global"]
    # per (batch, channel, position), from the maths written out in docs/flops.md:
    # forward 7 per state + dt u, and with every option + bias 1, softplus 2, D u 2, silu gate 4;
    # backward 20 per state + 4, and with every option + 2, 6, 4, 11
    forward, backward = (7 * n + 10, 20 * n + 27) if full else (7 * n + 1, 20 * n + 4)
    assert counts[torch.ops.mkeval_mamba.selective_scan] == b * d * L * forward
    assert counts[torch.ops.mkeval_mamba.selective_scan_backward] == b * d * L * backward
    assert set(counts) == {torch.ops.mkeval_mamba.selective_scan, torch.ops.mkeval_mamba.selective_scan_backward}


def analytic_flops_per_token(cfg: MambaConfig, length: int, backend: str) -> tuple[float, float]:
    """(forward, backward) FLOPs per token of a training step, from the config alone (docs/flops.md)."""
    d, di, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank, cfg.d_conv
    linears = 2 * d * 2 * di + 2 * di * (r + 2 * n) + 2 * r * di + 2 * di * d  # in, x, dt, out projections
    if backend == "compiled":  # the causal conv and its silu as one op: 2k + 3 forward, 6k + 9 backward
        conv_fwd, conv_bwd = di * (2 * k + 3), di * (6 * k + 9)
    else:  # torch's depthwise conv1d, over L + k - 1 output positions; input and weight gradients
        conv_fwd = 2 * di * k * (length + k - 1) / length
        conv_bwd = 2 * conv_fwd
    fwd_layer = linears + conv_fwd + di * (7 * n + 10)  # the scan with D, z, delta_bias, softplus
    bwd_layer = 2 * linears + conv_bwd + di * (20 * n + 27)  # input and weight gradients; the scan's backward
    head = 2 * d * cfg.vocab_size  # tied: the embedding matrix
    return cfg.n_layer * fwd_layer + head, cfg.n_layer * bwd_layer + 2 * head


@pytest.mark.parametrize("backend", [_COMPILED, "torch"])
def test_step_flops_per_token_match_the_analytic_count(registry, backend):
    from mkeval.engine.measure import count_step_flops

    batch, length = 2, 32
    model = mkeval.build_model("mamba", VOCAB, length, seed=0, registry=registry, backend=backend)
    ids = torch.randint(0, VOCAB, (batch, length + 1), generator=torch.Generator().manual_seed(0))
    flops = count_step_flops(model, ids[:, :-1], lambda logits: F.cross_entropy(
        logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)), registry.flop_formulas)
    assert model.backend == backend
    forward, backward = analytic_flops_per_token(model.config, length, backend)
    tokens = batch * length
    assert flops.forward / tokens == pytest.approx(forward, rel=1e-9)  # the two counts agree exactly
    assert flops.backward / tokens == pytest.approx(backward, rel=1e-9)
    assert flops.uncounted == {}  # everything but elementwise work has a formula


@pytest.mark.slow
@pytest.mark.parametrize("backend", [_COMPILED, "torch"])
def test_model_compiles_whole_graph_through_the_scan_op(backend):
    """fullgraph: the scan's custom ops and their autograd trace without graph breaks (aot_eager:
    the fake kernels and the traced backward, without inductor's compile time); same numbers as eager."""
    torch._dynamo.reset()
    model = make(backend=backend)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))

    def step(fn):
        model.zero_grad()
        out = fn(ids)
        out.square().mean().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    compiled, eager = step(torch.compile(model, backend="aot_eager", fullgraph=True)), step(model)
    torch.testing.assert_close(compiled, eager)


# --------------------------------------------------------------------------- transformers weights
@pytest.fixture(scope="module")
def hf_mamba():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, state_size=8,
                                      time_step_rank=3, conv_kernel=3, use_bias=True, use_cache=False)
    model = transformers.MambaForCausalLM(config).eval()
    with torch.no_grad():  # move every weight off its initial value, so a swapped or dropped tensor shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def test_from_transformers_gives_the_same_logits_and_gradients(hf_mamba):
    ours = mkeval_mamba.from_transformers(hf_mamba).eval()
    c = ours.config
    assert c.bias and (c.d_conv, c.resolved_dt_rank, c.d_state) == (3, 3, 8)
    ids = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(hf_mamba, ids), rtol=0, atol=1e-4)
    for model, logits_of in ((ours, lambda m, x: m(x)), (hf_mamba, hf_logits)):
        model.zero_grad()
        F.cross_entropy(logits_of(model, ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    hf_grads = {k.replace("embeddings", "embedding"): p.grad for k, p in hf_mamba.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_grads[name], rtol=1e-3, atol=1e-5, msg=name)
    hf_mamba.zero_grad()


def test_to_transformers_gives_the_same_logits():
    ours = make(d_model=32, n_layer=2).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs = mkeval_mamba.to_transformers(ours).eval()
    ids = torch.randint(0, VOCAB, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(theirs, ids), ours(ids), rtol=0, atol=1e-4)
    back = mkeval_mamba.from_transformers(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), back.state_dict().values()))


def test_conversion_leaves_the_global_rng_alone(hf_mamba):
    state = torch.random.get_rng_state()
    mkeval_mamba.to_transformers(mkeval_mamba.from_transformers(hf_mamba))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_untied_transformers_model_is_refused():
    import transformers

    config = transformers.MambaConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, tie_word_embeddings=False)
    hf = transformers.MambaForCausalLM(config)
    with torch.no_grad():
        hf.lm_head.weight.add_(1.0)
    with pytest.raises(UsageError, match="tie"):
        mkeval_mamba.from_transformers(hf)


# --------------------------------------------------------------------------- backends
def test_backend_env_var_cuda_without_a_gpu_says_what_is_missing(monkeypatch):
    monkeypatch.setenv("MKEVAL_MAMBA_BACKEND", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(mkeval_mamba.BackendUnavailable, match="needs a CUDA GPU.*MKEVAL_MAMBA_BACKEND=torch"):
        make()


def test_backend_cuda_without_mamba_ssm_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("MKEVAL_MAMBA_BACKEND", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "_import_cuda_kernels", lambda: "cannot import mamba-ssm (ModuleNotFoundError)")
    with pytest.raises(mkeval_mamba.BackendUnavailable, match=r"mamba-ssm.*pip install 'mkeval\[cuda\]'"):
        make()


def test_backend_cuda_on_cpu_tensors_is_an_error_not_a_fallback(monkeypatch):
    with pytest.raises(mkeval_mamba.BackendUnavailable, match="only on CUDA tensors"):
        backends.backend_for("cuda", torch.device("cpu"))


def test_auto_on_a_gpu_without_mamba_ssm_warns_and_records_torch(monkeypatch, caplog):
    monkeypatch.setattr(backends, "_import_cuda_kernels", lambda: "cannot import mamba-ssm (ModuleNotFoundError)")
    monkeypatch.setattr(backends, "_warned_auto_fallback", False)
    with caplog.at_level(logging.WARNING, logger=backends.__name__):
        assert backends.backend_for("auto", torch.device("cuda")) == "torch"
    assert "pure-PyTorch scan" in caplog.text and "pip install" in caplog.text


def test_compiled_without_numba_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(backends, "numba_installed", lambda: False)
    with pytest.raises(mkeval_mamba.BackendUnavailable, match="pip install numba.*MKEVAL_MAMBA_BACKEND=torch"):
        make(backend="compiled")
    assert backends.backend_for("auto", torch.device("cpu")) == "torch"  # auto falls back to the torch scan


@pytest.mark.skipif(not numba_installed(), reason="numba not installed")
def test_compiled_on_gpu_tensors_is_an_error_not_a_fallback():
    with pytest.raises(mkeval_mamba.BackendUnavailable, match="runs on CPU tensors"):
        backends.backend_for("compiled", torch.device("cuda"))


def test_compiled_and_torch_backends_give_the_same_logits_and_gradients():
    if not numba_installed():
        pytest.skip("numba not installed")
    ids = torch.randint(0, VOCAB, (2, 45), generator=torch.Generator().manual_seed(3))
    results = []
    for backend in ("compiled", "torch"):
        model = make(backend=backend, chunk_size=8)
        logits = model(ids)
        logits.square().mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_backend_is_a_usage_error_with_a_suggestion(monkeypatch):
    monkeypatch.setenv("MKEVAL_MAMBA_BACKEND", "troch")
    with pytest.raises(UsageError, match="Did you mean 'torch'"):
        make()


def test_env_var_and_option_select_the_backend_and_it_is_recorded(monkeypatch):
    monkeypatch.setenv("MKEVAL_MAMBA_BACKEND", "reference")
    ref = make()
    assert ref.backend == "reference"
    assert make(backend="torch").backend == "torch"  # the option wins over the environment
    monkeypatch.delenv("MKEVAL_MAMBA_BACKEND")
    fast = make()
    assert fast.backend == DEFAULT_CPU_BACKEND
    ids = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), ref(ids), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- benchmark
@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("mamba_ssm", "causal_conv1d")),
    reason="with mamba_ssm installed, transformers calls its CUDA kernels even for the CPU benchmark",
)
def test_benchmark_runs_and_compares_same_weights():
    result = mkeval_mamba.bench.run_scan_benchmark(seq_lens=[12, 8], repeats=1)
    assert [row["seq_len"] for row in result.rows] == [8, 12]
    for row in result.rows:
        assert set(result.columns) <= row.keys()
        assert row["logits_max_abs_diff"] < 1e-4
        assert row["speedup"] == pytest.approx(row["transformers_step_s"] / row["mkeval_step_s"])
    assert "sequential loop" in result.meta["transformers_path"]


def test_benchmark_refuses_other_models():
    with pytest.raises(UsageError, match="'mamba' model only"):
        mkeval_mamba.bench.run_scan_benchmark(models=["transformer"])
