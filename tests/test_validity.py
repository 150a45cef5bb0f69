"""Numbers that cannot mislead: precision roles, size matching by default, split safety and its marks.

Each test reproduces a finding of the review that recomputed mkeval's numbers (they failed on the
code before the fix)."""

from __future__ import annotations

import json

import pytest

import mkeval
from mkeval import UsageError
from mkeval.engine.models import build_model, count_parameters
from mkeval.report.core import build_report

from helpers import bigram_spec


@pytest.fixture
def reg(registry):
    registry.add(bigram_spec())
    return registry


def _run(reg, protocol, out, **kw):
    kw.setdefault("datasets", "markov")
    return mkeval.run(protocol=protocol, output_dir=out, registry=reg, device="cpu", **kw)


# --------------------------------------------------------------------------- precisions
def test_every_float_precision_trains_its_own_cell(reg, tiny_protocol, tmp_path):
    """Finding: --precisions fp32,bf16 only evaluated the fp32 checkpoint under bf16 autocast."""
    result = _run(reg, tiny_protocol, tmp_path, models="bigram", precisions="fp32,bf16,int8")
    by = {r.precision: r for r in result.results}
    assert by["fp32"].precision_role == by["bf16"].precision_role == "trained"
    assert by["bf16"].trained_precision == "bf16" and by["bf16"].evaluated_checkpoint_of is None
    assert by["bf16"].config["precision"]["autocast_dtype"] == "bfloat16"
    assert by["bf16"].checkpoint != by["fp32"].checkpoint  # two trainings, two checkpoints
    assert by["bf16"].epoch_losses != by["fp32"].epoch_losses
    # a post-training precision evaluates the first training precision's checkpoint
    assert by["int8"].precision_role == "post-training" and by["int8"].trained_precision == "fp32"
    assert by["int8"].checkpoint == by["fp32"].checkpoint


def test_evaluating_a_checkpoint_at_another_float_precision_is_named_as_such(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, models="bigram", evaluate_at="bf16")
    [trained, evaluated] = result.results
    assert evaluated.precision_role == "evaluation-only" and evaluated.precision == "bf16"
    assert evaluated.trained_precision == "fp32" and evaluated.checkpoint == trained.checkpoint
    assert result.cells[1].name == "bigram_markov_seq16_bits16_bf16_from_fp32"
    with pytest.raises(UsageError, match="post-training"):
        _run(reg, tiny_protocol, tmp_path / "x", models="bigram", evaluate_at="int8", dry_run=True)


# --------------------------------------------------------------------------- sizes
def test_models_are_matched_to_the_first_one_by_default(tiny_protocol, tmp_path):
    """Finding: without --match-params, bk and mamba differed by 5.6-16% in non-embedding parameters."""
    result = mkeval.run(models="bk,mamba,transformer", datasets="markov", protocol=tiny_protocol,
                        output_dir=tmp_path, device="cpu")
    by = {r.model_name: r for r in result.results}
    target = by["bk"].non_embedding_params
    for name in ("mamba", "transformer"):
        assert abs(by[name].non_embedding_params / target - 1) <= 0.03
        assert by[name].size_matching["matched"] and by[name].size_matching["reference"] == "bk"
        assert "size_not_matched" not in by[name].marks
    # the counts a result records are the built model's
    vocab = by["mamba"].config["dataset"]["vocab_size"]
    model = build_model("mamba", vocab, 16, **by["mamba"].config["model"]["options"])
    assert by["mamba"].non_embedding_params == count_parameters(model).non_embedding
    # ResNet-BK routes each token to 2 of its 4 experts: its active parameters per token are fewer
    bk = by["bk"]
    assert bk.active_params_per_token < bk.non_embedding_params
    assert by["mamba"].active_params_per_token == by["mamba"].non_embedding_params
    # state carried between tokens: recurrent for bk and mamba, a growing cache for the transformer
    gpt = build_model("transformer", vocab, 16, **by["transformer"].config["model"]["options"]).gpt.config
    assert by["transformer"].state_size == {"fixed": 0, "per_token": 2 * gpt.n_layer * gpt.n_embd}
    assert by["mamba"].state_size["per_token"] == 0 and by["mamba"].state_size["fixed"] > 0
    assert by["bk"].state_size == {"fixed": 2 * 8 * 2, "per_token": 0}


def test_match_params_none_keeps_own_sizes_and_marks_them(tiny_protocol, tmp_path):
    result = mkeval.run(models="bk,mamba", datasets="markov", match_params="none", protocol=tiny_protocol,
                        output_dir=tmp_path, device="cpu")
    for r in result.results:
        assert not r.size_matching["matched"] and "--match-params none" in r.marks["size_not_matched"]
    report = build_report(tmp_path)
    [_, cost] = report.lm_tables()
    params = cost[1].index("params")
    assert all(row[params].endswith("≠") for row in cost[2])


# --------------------------------------------------------------------------- splits
@pytest.mark.parametrize("split_map", ["train=valid,valid=test", "train=test", "valid=test"])
def test_selecting_or_training_on_test_is_refused(tmp_path, split_map):
    """Finding: --split-map train=valid,valid=test selected the checkpoint on test text, silently."""
    with pytest.raises(UsageError, match="--allow-test-contamination"):
        mkeval.run(models="transformer", datasets="markov", split_map=split_map, output_dir=tmp_path, dry_run=True)


def test_test_contamination_when_allowed_is_marked_everywhere(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, models="bigram", split_map="valid=test",
                  allow_test_contamination=True)
    [r] = result.results
    assert "valid=test" in r.marks["test_contamination"]
    [quality, _] = build_report(tmp_path).lm_tables()
    assert quality[2][0][quality[1].index("test ppl")].endswith("‡")


def test_validation_on_training_text_and_the_vocabulary_source_are_recorded(reg, tmp_path):
    from mkeval import Protocol

    root = tmp_path / "data" / "ptb"
    root.mkdir(parents=True)
    (root / "ptb.valid.txt").write_text("".join(f"the cat sat on mat {i % 7}\n" for i in range(300)))
    (root / "ptb.test.txt").write_text("the dog sat on the mat\nthe cat ran\n" * 20)
    protocol = Protocol(batch_size=4, seq_lens=(8,), train_tokens=4 * 8 * 6, eval_interval=3, warmup_steps=1)
    result = _run(reg, protocol, tmp_path / "out", models="bigram", datasets="ptb", data_dir=tmp_path / "data",
                  split_map="train=valid")
    [r] = result.results
    assert "valid_is_train_text" in r.marks
    # the word vocabulary came from the valid split: "dog" and "ran" are <unk> in test
    assert r.vocabulary["fitted_on"] == "valid" and r.vocabulary["tokenizer"] == "word"
    test_tokens = 2 * 20 * 1 + 20 * (6 + 3)  # every word and <eos>, 20 times two lines
    assert r.vocabulary["test_unk_tokens"] == 40 and r.vocabulary["test_unk_rate"] == pytest.approx(40 / test_tokens)
    report = build_report(tmp_path / "out")
    [quality, _] = report.lm_tables()
    assert quality[2][0][quality[1].index("val ppl")].endswith("†")
    assert any("fitted on the valid split" in n and "<unk> rate" in n for n in report.notes())


def test_the_multi_dataset_file_of_a_precision_sweep_keeps_precisions_apart(reg, tiny_protocol, tmp_path):
    _run(reg, tiny_protocol, tmp_path, models="bigram", datasets="markov,mqar", precisions="fp32,bf16,int8")
    data = json.loads((tmp_path / "bigram_multi_dataset.json").read_text())
    assert {(g["trained_at"], g["evaluated_at"]) for g in data["groups"]} == {("fp32", "fp32"), ("bf16", "bf16"),
                                                                            ("fp32", "int8")}
    assert data["mean_perplexity"] is None  # several groups: no single number at the top
