"""INT8/INT4 precisions: quantized weights (checked by hand), paired deltas, one training per model."""

import json
import subprocess
import sys

import pytest
import torch

import mkeval
from mkeval.engine.batching import limit_windows, make_windows
from mkeval.engine.evaluation import evaluate_lm
from mkeval.engine.models import build_model
from mkeval.engine.checkpoint import load_weights

pytest.importorskip("torchao")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("quant")
    # each model at its preset size (whose widths are multiples of int4's group of 32)
    result = mkeval.run(models="transformer,bk,mamba", bits="32,8,4", output_dir=out, batch_size=8, seq_len=32,
                        match_params="none",
                        train_tokens=8 * 32 * 12, eval_interval=6, warmup_steps=2, eval_tokens=1024,
                        test_tokens=2048)
    return out, result


def test_each_model_trains_once_and_every_precision_evaluates_that_checkpoint(sweep):
    out, result = sweep
    assert not result.failed
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == [f"{m}_markov_seq32_bits32" for m in ("bk", "mamba", "transformer")]
    by = {(r.model_name, r.precision): r for r in result.results}
    for model in ("transformer", "bk", "mamba"):
        base = by[(model, "fp32")]
        assert base.evaluated_checkpoint_of is None and base.trained_precision == "fp32"
        for name in ("int8", "int4"):
            r = by[(model, name)]
            assert r.evaluated_checkpoint_of == f"{model}_markov_seq32_bits32"
            assert r.checkpoint == base.checkpoint and r.steps == base.steps  # no retraining
            assert r.perplexity_delta == pytest.approx(r.test_perplexity - base.test_perplexity)
            assert r.relative_perplexity_delta == pytest.approx(r.perplexity_delta / base.test_perplexity)
            assert abs(r.relative_perplexity_delta) < 0.2  # a real, small degradation, finite
            assert r.quantization["bytes_after"] < r.quantization["bytes_before"]
            assert r.model_size_mb == pytest.approx(r.quantization["bytes_after"] / 2**20)


def _reload(out, result, model):
    r = next(r for r in result.results if r.model_name == model and r.precision == "fp32")
    net = build_model(model, 32, 32, seed=0)
    load_weights(net, out / r.checkpoint, torch.device("cpu"))
    return net, r


@pytest.mark.parametrize("model", ["transformer", "bk", "mamba"])
def test_quantized_weights_are_what_the_result_says(sweep, model, registry):
    out, result = sweep
    for name, levels in (("int8", 256), ("int4", 16)):
        net, _ = _reload(out, result, model)
        original = {n: m.weight.detach().clone() for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
        report = registry.get("precision", name).quantize(net)
        recorded = json.loads((out / f"{model}_markov_seq32_bits{8 if name == 'int8' else 4}.json").read_text())
        assert set(report["quantized_layers"]) == set(recorded["quantization"]["quantized_layers"])
        assert report["quantized_layers"], "nothing was quantized"
        for fqn in report["quantized_layers"]:
            w = net.get_submodule(fqn).weight
            q, scale = w.qdata, w.scale
            assert q.dtype == torch.int8
            if name == "int4":
                assert int(q.min()) >= -8 and int(q.max()) <= 7  # 4-bit values
                groups = q.reshape(q.shape[0], -1, 32)
                assert max(len(torch.unique(g)) for g in groups.reshape(-1, 32)) <= levels
                step = scale.reshape(q.shape[0], -1, 1)  # one scale per group of 32 input columns
            else:
                step = scale.reshape(q.shape[0], 1)  # one scale per output channel
            # dequantization error at most half a step (plus rounding): a hand bound, per element
            deq = w.dequantize().float()
            err = (deq - original[fqn]).abs().reshape(step.shape[0], step.shape[1] if step.dim() > 2 else 1, -1)
            assert bool((err <= step.abs().reshape(err.shape[0], err.shape[1], 1) * 0.5 + 1e-6).all()), fqn
        kept = set(report["kept_high_precision"])
        assert kept | set(report["quantized_layers"]) == set(original)
        if model == "bk" and name == "int4":
            assert any("experts_out" in f for f in report["quantized_layers"])  # the MoE experts are quantized


def test_full_precision_evaluation_is_unchanged_by_the_quantized_ones(sweep):
    out, result = sweep
    fp32 = mkeval.get_registry().get("precision", "fp32")
    for model in ("transformer", "bk", "mamba"):
        net, r = _reload(out, result, model)
        # the same windows as the cell: the test split under the protocol's test_tokens
        from mkeval.registry.manager import get_registry

        data = get_registry().get("dataset", "markov").load(mkeval.runner.data_request(result.protocol, 32, None, {}))
        windows = limit_windows(make_windows(data.splits["test"], 32, cover_tail=True), result.protocol.test_tokens, 0)
        again = evaluate_lm(net, windows, result.protocol.batch_size, fp32, torch.device("cpu"))
        assert again.perplexity == pytest.approx(r.test_perplexity, rel=1e-6)


def test_a_precision_the_device_cannot_run_is_refused_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "transformer", "--precisions",
                           "fp32,int4-packed", "--output-dir", str(tmp_path / "x"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "int4-packed" in proc.stderr and "cpu" in proc.stderr and "--precisions int4" in proc.stderr
    assert not (tmp_path / "x").exists()
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--bits", "3", "--output-dir", str(tmp_path / "y")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "accepted values: 4, 8, 16, 32" in proc.stderr
    assert not (tmp_path / "y").exists()


def test_the_report_shows_perplexity_by_precision(sweep):
    out, _ = sweep
    proc = subprocess.run([sys.executable, "-m", "mkeval", "report", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0
    rows = [[c.strip() for c in line.split("│")] for line in proc.stdout.splitlines() if "markov" in line]
    # columns: model, dataset, seq, trained at, eval at ("=": at the training precision)
    shown = {(r[1], r[5] if r[5] != "=" else r[4]) for r in rows}
    assert {(m, p) for m in ("bk", "mamba") for p in ("fp32", "int8", "int4")} <= shown
    assert all(r[4] == "fp32" for r in rows)  # every row says what its checkpoint was trained at


def test_layers_a_model_marks_stay_in_high_precision_and_are_listed(registry):
    class Marked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.keep = torch.nn.Linear(64, 64)
            self.quant = torch.nn.Linear(64, 64)
            self.narrow = torch.nn.Linear(16, 64)  # input width not a multiple of int4's group of 32

        def no_quantize(self):
            return {"keep"}

    for name in ("int8", "int4"):
        model = Marked()
        before = model.keep.weight.detach().clone()
        report = registry.get("precision", name).quantize(model)
        assert set(report["quantized_layers"]) == ({"quant", "narrow"} if name == "int8" else {"quant"})
        assert "no_quantize" in report["kept_high_precision"]["keep"]
        assert type(model.keep.weight) is torch.nn.Parameter and torch.equal(model.keep.weight, before)
        if name == "int4":
            assert "group size 32" in report["kept_high_precision"]["narrow"]


def test_an_evaluation_cell_hash_follows_the_checkpoint_it_evaluates(tmp_path):
    """fp16-trained and bf16-trained checkpoints share a file name; their int8 cells must not share a hash."""
    def int8_hash(precisions):
        result = mkeval.run(models="transformer", precisions=precisions, output_dir=tmp_path, dry_run=True)
        return next(c.cell_hash for c in result.cells if c.config["cell"]["precision"] == "int8")

    assert int8_hash("fp16,int8") != int8_hash("bf16,int8")
    assert int8_hash("fp32,int8") == int8_hash("fp32,int8")


def _plugin_precision(registry, name, returns):
    from helpers import bigram_spec

    def quantize(model):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())  # a real (if coarse) rounding of the weights
        return returns

    registry.add(bigram_spec())
    registry.add(mkeval.PrecisionSpec(name=name, bits=6, quantize=quantize, description="test rounding"))


def test_a_plugin_quantize_that_returns_no_bytes_is_measured(registry, tiny_protocol, tmp_path):
    _plugin_precision(registry, "round6", {"scheme": "bf16 rounding"})
    result = mkeval.run(models="bigram", precisions="fp32,round6", protocol=tiny_protocol, output_dir=tmp_path,
                        registry=registry, device="cpu")
    assert not result.failed, [c.error for c in result.failed]
    q = result.results[1].quantization
    model = build_model("bigram", result.results[0].config["dataset"]["vocab_size"], 16, registry=registry)
    assert q["bytes_after"] == sum(p.numel() * 4 for p in model.parameters())  # fp32 storage, measured by mkeval
    assert q["bytes_after_measured_by"] == "mkeval" and q["scheme"] == "bf16 rounding"


@pytest.mark.parametrize("returns,words", [(None, "returned NoneType; it must return a dict"),
                                           ({"bytes_after": -3}, "bytes_after=-3"),
                                           ({"bytes_after": "big"}, "bytes_after='big'")])
def test_a_plugin_quantize_returning_garbage_fails_its_cell_naming_the_plugin(registry, tiny_protocol, tmp_path,
                                                                           returns, words):
    _plugin_precision(registry, "bad6", returns)
    result = mkeval.run(models="bigram", precisions="fp32,bad6", protocol=tiny_protocol, output_dir=tmp_path,
                        registry=registry, device="cpu")
    assert [c.status for c in result.cells] == ["ok", "failed"]
    error = result.cells[1].error
    assert "precision 'bad6' (plugin 'python'" in error and words in error
