"""The model contract checks: every registered model passes them, and they catch broken models."""

import pytest
import torch
from torch import nn

from mkeval.engine.checks import check_model
from mkeval.registry.manager import Registry, load_entry_points

from helpers import Bigram, bigram_spec


def _installed_models():
    reg = Registry()
    load_entry_points(reg)
    return reg.names("model")


@pytest.mark.parametrize("name", _installed_models())
def test_every_installed_model_meets_the_contract(registry, name):
    results = check_model(name, registry=registry)
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


class Leaky(Bigram):
    """Mixes in the mean over the whole sequence: sees the future."""

    def forward(self, input_ids):
        h = self.hidden_states(input_ids)
        return self.head(h + h.mean(dim=1, keepdim=True))


class Frozen(Bigram):
    def __init__(self, vocab_size, **kw):
        super().__init__(vocab_size, **kw)
        self.unused = nn.Linear(3, 3)


class Random(Bigram):
    def forward(self, input_ids):
        return super().forward(input_ids) + torch.randn(1)


@pytest.mark.parametrize("cls,check,reason", [
    (Leaky, "causality", "sees the future"),
    (Frozen, "gradients", "unused.weight"),
    (Random, "causality", "changed logits"),
])
def test_checks_catch_broken_models(cls, check, reason):
    from mkeval import ModelSpec

    reg = Registry()
    reg.add(ModelSpec(name="broken", build=lambda vocab_size, max_seq_len, size=None: cls(vocab_size)))
    results = {r.name: r for r in check_model("broken", registry=reg)}
    assert not results[check].passed and reason in results[check].detail


def test_a_good_model_passes(registry):
    registry.add(bigram_spec())
    assert all(r.passed for r in check_model("bigram", registry=registry))


# --------------------------------------------------------------------------- at run time
class BiLSTM(nn.Module):
    """A bidirectional LSTM language model: each position reads the whole sequence, so it 'predicts'
    the next token by looking at it. It claims nothing about causality (the default is causal)."""

    def __init__(self, vocab_size, d_model=32):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.lstm = nn.LSTM(d_model, d_model, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * d_model, vocab_size)

    def hidden_states(self, input_ids):
        return self.lstm(self.embed(input_ids))[0]

    def forward(self, input_ids):
        return self.head(self.hidden_states(input_ids))


def test_a_bidirectional_model_is_refused_at_run_time_and_reported_as_failed(registry, tiny_protocol, tmp_path):
    import mkeval
    from mkeval import ModelSpec
    from mkeval.report.core import build_report

    registry.add(ModelSpec(name="bilstm", build=lambda vocab_size, max_seq_len, size=None: BiLSTM(vocab_size)))
    registry.add(bigram_spec())
    result = mkeval.run(models="bilstm,bigram", datasets="markov", seeds="0,1", protocol=tiny_protocol,
                        output_dir=tmp_path, registry=registry, device="cpu")
    status = {c.name: c for c in result.cells}
    for seed in (0, 1):
        cell = status[f"bilstm_markov_seq16_bits32_seed{seed}"]
        assert cell.status == "failed"
        assert "failed the causality check" in cell.error and "sees the future" in cell.error
    assert all(c.status == "ok" for n, c in status.items() if n.startswith("bigram"))  # the matrix went on
    assert not list(tmp_path.glob("checkpoints/bilstm*"))  # refused before any training
    report = build_report(tmp_path)
    assert {r.model_name for r in report.results} == {"bigram"}
    assert {f["name"] for f in report.failed} == {"bilstm_markov_seq16_bits32_seed0", "bilstm_markov_seq16_bits32_seed1"}
    good = report.results[0].contract_checks
    assert {k: v["passed"] for k, v in good.items()} == {"shape": True, "causality": True, "eval_determinism": True}


def test_a_model_that_declares_itself_non_causal_is_refused_up_front(registry, tiny_protocol, tmp_path):
    import mkeval

    result = mkeval.run(models="bk", datasets="markov", model_options={"bk": {"causal": False}},
                        protocol=tiny_protocol, output_dir=tmp_path, registry=registry, device="cpu")
    [cell] = result.cells
    assert cell.status == "failed" and "declares itself non-causal" in cell.error


def test_a_bidirectional_model_is_refused_for_prompted_scoring(registry, tiny_protocol, tmp_path):
    import json

    import mkeval
    from mkeval import ModelSpec

    spec = tmp_path / "spec" / "toyprompt.yaml"
    spec.parent.mkdir()
    spec.write_text("name: toyprompt\nkind: multiple_choice\nmetrics: [accuracy]\nlocal:\n  - format: jsonl\n"
                    "    files: {eval: val.jsonl}\ninputs: ['{q}']\nchoices: ['{a}', '{b}']\nlabel: label\n"
                    "labels: [0, 1]\nfinetune: false\nprompt:\n  text: '{q}'\n  choices: ['{a}', '{b}']\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.jsonl").write_text("".join(json.dumps({"q": f"q{i}", "a": "yes", "b": "no", "label": i % 2}) + "\n"
                                            for i in range(6)))
    registry.add(ModelSpec(name="bilstm", build=lambda vocab_size, max_seq_len, size=None: BiLSTM(vocab_size)))
    result = mkeval.run(models="bilstm", tasks="toyprompt", include_path=str(spec.parent), data_dir=data,
                        protocol=tiny_protocol.replace(fewshot=(0,)), output_dir=tmp_path / "out", registry=registry,
                        device="cpu")
    [(unit, task, error)] = result.failed_tasks
    assert task == "toyprompt" and "failed the causality check" in error and "prompt scoring" in error
    assert not list((tmp_path / "out").rglob("*.predictions.jsonl"))
