"""Long sequences: gradient checkpointing changes memory, not the gradients; runs at 8192 tokens;
the scaling benchmark's mechanics (declared limits, out of memory, JSON and PNG)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mkeval
from helpers import bigram_spec
from mkeval.engine.models import build_model


@pytest.mark.parametrize("name", ["bk", "mamba", "transformer"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    ids = torch.randint(0, 50, (2, 65), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = build_model(name, 50, 64, seed=0)
        model.train()
        model.set_gradient_checkpointing(checkpointing)
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_bk_and_mamba_train_at_8192_tokens_with_checkpointing(tmp_path):
    result = mkeval.run(models="bk,mamba", seq_len=8192, batch_size=1, train_tokens=8192 * 2, eval_interval=1,
                        warmup_steps=1, eval_tokens=8192, test_tokens=8192, grad_checkpointing=True,
                        output_dir=tmp_path)
    assert not result.failed
    for r in result.results:
        assert r.seq_len == 8192 and r.config["protocol"]["grad_checkpointing"] is True
        assert r.test_tokens >= 8192 and 1 < r.test_perplexity < 32  # the markov vocabulary is 32


def test_checkpointing_a_model_without_support_is_refused_before_training(registry, tmp_path):
    registry.add(bigram_spec())
    with pytest.raises(mkeval.UsageError, match="set_gradient_checkpointing"):
        mkeval.run(models="bigram", grad_checkpointing=True, output_dir=tmp_path / "x", registry=registry)
    assert not (tmp_path / "x").exists()


class OutOfMemory(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.w = torch.nn.Linear(4, vocab_size)

    def forward(self, ids):
        raise torch.OutOfMemoryError("simulated: no memory for this length")


def test_scaling_reports_limits_and_out_of_memory_and_goes_on(monkeypatch):
    from mkeval import ModelSpec
    from mkeval_scaling import run

    reg = mkeval.get_registry()
    for spec in (ModelSpec("capped-at-64", lambda vocab_size, max_seq_len, size=None, **o: build_model(
                     "transformer", vocab_size, max_seq_len, size="tiny"), max_seq_len=64),
                 ModelSpec("always-oom", lambda vocab_size, max_seq_len, size=None, **o: OutOfMemory(vocab_size))):
        if spec.name not in reg.entries["model"]:
            reg.add(spec)
    result = run(seq_lens=[32, 64, 128], models=["capped-at-64", "always-oom", "bk"], repeats=1, device="cpu")
    rows = {(r["model"], r["seq_len"]): r for r in result.rows}
    assert rows[("capped-at-64", 128)]["status"].startswith("unsupported: capped-at-64 declares at most 64")
    assert rows[("capped-at-64", 64)]["status"] == "ok"
    assert all(rows[("always-oom", n)]["status"] == "out of memory" for n in (32, 64, 128))
    for n in (32, 64, 128):  # the same tokens per batch at every length
        r = rows[("bk", n)]
        assert r["status"] == "ok" and r["batch_size"] * n == 128
        assert r["tokens_per_s"] == pytest.approx(128 / r["step_s"])
        assert r["us_per_token"] == pytest.approx(1e6 * r["step_s"] / 128)
        assert r["flops_per_token"] > 0
    assert rows[("bk", 32)]["per_token_vs_shortest"] == 1.0


def test_bench_scaling_writes_json_and_png(tmp_path):
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, "-m", "mkeval", "bench", "scaling", "--seq-len", "32,64", "--models",
                           "bk,transformer", "--repeats", "1", "--device", "cpu", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {(r["model"], r["seq_len"]) for r in data["rows"]} == {(m, n) for m in ("bk", "transformer") for n in (32, 64)}
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the transformer's attention is counted: its FLOPs per token grow with length, bk's do not
    flops = {(r["model"], r["seq_len"]): r["flops_per_token"] for r in data["rows"]}
    assert flops[("transformer", 64)] > flops[("transformer", 32)]
    assert flops[("bk", 64)] == flops[("bk", 32)]


def test_scaling_times_the_models_of_a_length_in_turns(monkeypatch):
    """Timed steps alternate between models, the order rotating each round, so that a machine
    whose speed drifts during the run slows every model alike; a model that fails while timed
    is reported as failed and the others go on."""
    import mkeval_scaling
    from torch.utils.benchmark.utils.common import Measurement, TaskSpec

    calls = []

    class OneCallTimer:  # torch's Timer also runs warm-up calls; here each measurement is one call
        def __init__(self, stmt, globals, num_threads):
            self.step = globals["step"]

        def timeit(self, number):
            self.step()
            return Measurement(1, [0.01 * len(calls)], TaskSpec("step()", "pass"))

    def step(model, opt, ids):
        calls.append(model)
        if model == "c" and calls.count("c") == 3:  # its warm-up, one timed step; the second fails
            raise RuntimeError("simulated")

    monkeypatch.setattr(mkeval_scaling, "Timer", OneCallTimer)
    monkeypatch.setattr(mkeval_scaling, "_build", lambda name, seq_len, batch, device: (name, None, None))
    monkeypatch.setattr(mkeval_scaling, "_step", step)
    rows = [{"model": m, "seq_len": 8, "batch_size": 2, "status": "ok"} for m in "abc"]
    mkeval_scaling.time_models(rows, repeats=4, device=torch.device("cpu"))
    assert calls == list("abc") + list("abc") + list("bca") + list("ab") + list("ab")  # warm-ups, then 4 rounds
    assert [r["status"] for r in rows] == ["ok", "ok", "failed: RuntimeError: simulated"]
    assert rows[0]["steps_timed"] == rows[1]["steps_timed"] == 4
    a_times = [0.01 * (i + 1) for i, m in enumerate(calls) if m == "a"][1:]  # the fake clock: calls so far
    assert rows[0]["step_s"] == pytest.approx(float(np.median(a_times)))
    assert rows[0]["us_per_token"] == pytest.approx(1e6 * rows[0]["step_s"] / 16)


def test_scaling_on_cuda_gives_each_model_do_bench_and_goes_on_after_a_failure(monkeypatch):
    """The CUDA branch of time_models, without a GPU: do_bench (faked) per model in turn; one
    running out of memory is reported so and the next is still timed."""
    import triton.testing

    import mkeval_scaling

    monkeypatch.setattr(mkeval_scaling, "_build", lambda name, seq_len, batch, device: (name, None, None))
    monkeypatch.setattr(mkeval_scaling, "_step", lambda model, opt, ids: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    benched = []

    def do_bench(step, warmup, rep, quantiles):
        benched.append(rep)
        if len(benched) == 1:
            raise torch.OutOfMemoryError("simulated")
        return 2.0, 1.5, 2.5  # ms: median, 25th and 75th percentiles

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    rows = [{"model": m, "seq_len": 8, "batch_size": 2, "status": "ok"} for m in "ab"]
    mkeval_scaling.time_models(rows, repeats=3, device=torch.device("cuda"))
    assert benched == [300, 300]
    assert rows[0]["status"] == "out of memory" and "step_s" not in rows[0]
    assert rows[1]["step_s"] == pytest.approx(0.002) and rows[1]["step_iqr_s"] == pytest.approx(0.001)
    assert rows[1]["steps_timed"] is None and rows[1]["tokens_per_s"] == pytest.approx(16 / 0.002)
