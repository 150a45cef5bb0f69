"""The ``bk`` model: the core's contract checks, the MoE, build-time errors and sizing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch.utils.flop_counter import FlopCounterMode

import mkeval
import mkeval_bk
from mkeval_bk.model import PRESETS, BKConfig, build, non_embedding_params
from mkeval_bk.ops import FLOP_FORMULAS

VOCAB = 61


def _model(seed=0, **options):
    torch.manual_seed(seed)
    return build(VOCAB, 64, **options)


def _ids(batch=3, n=40, seed=1):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def _loss(model, ids):
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


# --------------------------------------------------------------------------- contract
def test_shapes():
    model = _model()
    ids = _ids()
    assert model(ids).shape == (3, 40, VOCAB)
    assert model.hidden_states(ids).shape == (3, 40, model.config.d_model)
    assert model.causal is True


@pytest.mark.parametrize("coupling", ["laplacian", "learned"])
def test_logits_are_strictly_causal(coupling):
    model = _model(coupling=coupling).eval()
    ids = _ids(n=48)
    with torch.no_grad():
        base = model(ids)
        for t in [1, 7, 23, 47]:
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % VOCAB
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), f"logits before {t} changed"
            assert not torch.equal(out[:, t], base[:, t])


def test_bidirectional_variant_is_flagged_and_sees_the_future():
    model = _model(causal=False).eval()
    assert model.causal is False and model.config.causal is False
    ids = _ids()
    changed = ids.clone()
    changed[:, 30] = (changed[:, 30] + 1) % VOCAB
    with torch.no_grad():
        assert not torch.equal(model(changed)[:, :30], model(ids)[:, :30])


def test_same_seed_same_weights_and_logits():
    a, b = _model(seed=3), _model(seed=3)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    ids = _ids()
    assert torch.equal(a(ids), b(ids))
    assert not torch.equal(_model(seed=4)(ids), a(ids))


@pytest.mark.parametrize("coupling", ["laplacian", "learned"])
def test_gradients_reach_every_parameter(coupling):
    model = _model(coupling=coupling)
    ids = _ids()
    (_loss(model, ids) + model.auxiliary_loss()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in ("z_re", "z_im_raw") + (("onsite", "coupling") if coupling == "learned" else ()):
        assert model.blocks[0].mix.get_parameter(name).grad.abs().sum() > 0, name


def test_safetensors_round_trip(tmp_path):
    model = _model().eval()
    path = tmp_path / "bk.safetensors"
    save_model(model, str(path))  # handles the tied embedding / head
    fresh = _model(seed=9).eval()
    load_model(fresh, str(path))
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))


# --------------------------------------------------------------------------- mixture of experts
def test_router_trains_through_the_gates():
    """The LM loss alone (no balance loss) gives the router gradient: gates scale outputs."""
    model = _model()
    _loss(model, _ids()).backward()
    for block in model.blocks:
        assert block.moe.router.weight.grad.abs().sum() > 0


def test_top_k_experts_only():
    model = _model(top_k=1, n_experts=3)
    moe = model.blocks[0].moe
    h = torch.randn(2, 5, model.config.d_model)
    with torch.no_grad():
        for e, expert in enumerate(moe.experts_out):  # expert e outputs unit vector e
            expert.weight.zero_()
            expert.bias.copy_(torch.eye(3, model.config.d_model)[e])
        probs = moe.router(h).softmax(-1)
        out = moe(h)
    chosen = probs.argmax(-1)
    expected = torch.zeros_like(out)
    expected.scatter_(-1, chosen[..., None], probs.max(-1).values[..., None])
    torch.testing.assert_close(out, expected)


def test_auxiliary_loss():
    model = _model()
    assert model.auxiliary_loss() is None
    model(_ids())
    aux = model.auxiliary_loss()
    assert aux.dim() == 0 and torch.isfinite(aux) and aux > 0 and aux.requires_grad
    # balanced routing gives n_experts * sum_e (1/E)(1/E) = 1 per layer, times the weight
    cfg = model.config
    assert 0.5 * cfg.aux_loss_weight * cfg.n_layers < aux.item() < 2 * cfg.aux_loss_weight * cfg.n_layers
    aux.backward()
    assert model.blocks[0].moe.router.weight.grad.abs().sum() > 0


def test_no_weight_decay_names_real_parameters():
    model = _model(coupling="learned")
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names and names <= set(params)
    assert "blocks.0.mix.z_im_raw" in names and "blocks.1.mix.coupling" in names


# --------------------------------------------------------------------------- building
@pytest.mark.parametrize(
    "options, field",
    [
        (dict(n_channels=0), "n_channels"),
        (dict(n_experts=0), "n_experts"),
        (dict(top_k=5), "top_k"),
        (dict(d_model=0), "d_model"),
        (dict(n_layers=-1), "n_layers"),
        (dict(coupling="random"), "coupling"),
        (dict(im_z_min=0.0), "im_z_min"),
        (dict(d_ff=0), "d_ff"),
        (dict(size="huge"), "size"),
        (dict(chanels=4), "chanels"),
        (dict(target_params=0), "target_params"),
        (dict(target_params=1000, d_model=32), "target_params"),
    ],
)
def test_bad_configs_fail_at_build_naming_the_field(options, field):
    with pytest.raises(mkeval.UsageError, match=field):
        _model(**options)


def test_size_knob_overrides_the_preset_and_grows_params():
    model = _model(size="small", d_model=96)
    assert model.config.d_model == 96 and model.config.n_layers == PRESETS["small"]["n_layers"]
    counts = [non_embedding_params(BKConfig(VOCAB, **{**PRESETS["small"], "d_model": d})) for d in (8, 9, 32, 96, 97, 200)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


@pytest.mark.parametrize("size, target", [("tiny", 1e5), ("small", 1e6), ("base", 1e7)])
def test_presets_are_about_their_size(size, target):
    count = non_embedding_params(BKConfig(VOCAB, **PRESETS[size]))
    assert 0.8 * target < count < 1.25 * target


def test_counts_agree_with_the_core():
    model = _model()
    assert mkeval.count_parameters(model).non_embedding == non_embedding_params(model.config)


def test_target_params_mode():
    model = _model(target_params=300_000)
    assert abs(non_embedding_params(model.config) - 300_000) < 0.02 * 300_000


# --------------------------------------------------------------------------- plugin wiring
def test_plugin_registers_model_flops_and_benchmark():
    from mkeval.registry.manager import Registry

    reg = Registry()
    reg.add_plugin(mkeval_bk, name="bk-test")
    spec = reg.get("model", "bk")
    assert spec.size_knob == "d_model" and spec.default_size == "tiny" and spec.sizes == ("tiny", "small", "base")
    assert reg.get("benchmark", "bk-core").run is not None
    assert torch.ops.mkeval_bk.resolvent_diagonal in reg.flop_formulas
    model = mkeval.build_model("bk", VOCAB, 32, seed=0, registry=reg, size="tiny", d_model=40)
    assert model.config.d_model == 40


def test_flop_counter_sees_the_resolvent():
    model = _model()
    ids = _ids(batch=2, n=16)
    with FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as counter:
        _loss(model, ids).backward()
    counts = counter.get_flop_counts()["Global"]
    systems = 2 * model.config.n_channels * model.config.n_layers
    assert counts[torch.ops.mkeval_bk.resolvent_diagonal] == systems * 16 * 11
    assert counts[torch.ops.mkeval_bk.resolvent_diagonal_backward] > 0


def analytic_flops_per_token(cfg: BKConfig) -> tuple[int, int]:
    """(forward, backward) FLOPs per token of a training step, from the config alone (docs/flops.md)."""
    d, c, e, f = cfg.d_model, cfg.n_channels, cfg.n_experts, cfg.hidden_width
    matmuls = (2 * d * c + 2 * 2 * c * d  # potential projection, features back to d_model
               + 2 * d * e + 2 * d * e * f + e * 2 * f * d  # router, every expert on every token
               + 2 * e * d)  # the gate-weighted sum of the expert outputs
    # the causal resolvent per channel and position: 11 forward, 28 backward (docs/bk.md)
    forward = cfg.n_layers * (matmuls + 11 * c) + 2 * d * cfg.vocab_size  # tied head
    backward = cfg.n_layers * (2 * matmuls + 28 * c) + 2 * 2 * d * cfg.vocab_size  # input and weight gradients
    return forward, backward


def test_step_flops_per_token_match_the_analytic_count(registry):
    from mkeval.engine.measure import count_step_flops

    batch, length = 2, 32
    model = mkeval.build_model("bk", VOCAB, length, seed=0, registry=registry)
    ids = _ids(batch=batch, n=length + 1)
    flops = count_step_flops(model, ids[:, :-1], lambda logits: F.cross_entropy(
        logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)), registry.flop_formulas)
    forward, backward = analytic_flops_per_token(model.config)
    tokens = batch * length
    assert flops.forward / tokens == pytest.approx(forward, rel=0.05)
    assert flops.backward / tokens == pytest.approx(backward, rel=0.05)
    assert flops.uncounted == {}  # everything but elementwise work has a formula


@pytest.mark.parametrize("options", [{}, {"coupling": "learned", "top_k": 1}])
def test_core_contract_checks_pass(options):
    from mkeval.engine.checks import check_model
    from mkeval.registry.manager import Registry

    reg = Registry()
    reg.add_plugin(mkeval_bk, name="bk-test")
    results = check_model("bk", registry=reg, **options)
    assert [r.name for r in results] == ["shape", "causality", "determinism", "eval_determinism", "gradients",
                                         "state_dict round trip"]
    assert all(r.passed for r in results), [(r.name, r.detail) for r in results if not r.passed]


@pytest.mark.slow
def test_model_compiles_whole_graph():
    """fullgraph torch.compile of the model (about 30 s of inductor compile on 2 CPU cores)."""
    torch._dynamo.reset()
    model = _model()
    ids = _ids(batch=2, n=32)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(ids)
    _loss_of = out.square().mean()
    _loss_of.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(ids)
    ref.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max().item() + 1e-9)
