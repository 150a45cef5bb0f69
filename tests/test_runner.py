"""The runner: cells, file names, resume, failure isolation, atomic writes, the result schema."""

import json
import os
from pathlib import Path

import pytest

import mkeval
from mkeval import UsageError
from mkeval.results import REQUIRED_FIELDS, SUMMARY_FILE, write_json

from helpers import bigram_spec


def _run(registry, protocol, out, **kw):
    kw.setdefault("models", "bigram")
    kw.setdefault("datasets", "markov")
    return mkeval.run(protocol=protocol, output_dir=out, registry=registry, device="cpu", **kw)


@pytest.fixture
def reg(registry):
    registry.add(bigram_spec())
    registry.add(bigram_spec("crasher", crash=True))
    registry.add(bigram_spec("nanmodel", nan=True))
    return registry


def test_dry_run_lists_the_product_and_writes_nothing(reg, tiny_protocol, tmp_path):
    out = tmp_path / "out"
    result = _run(reg, tiny_protocol, out, models="bigram,crasher", datasets="markov,mqar", seq_len="16,32",
                  seeds="0,1", precisions="fp32,bf16", dry_run=True)
    assert len(result.cells) == 2 * 2 * 2 * 2 * 2
    names = {c.name for c in result.cells}
    assert "bigram_markov_seq16_bits32_seed0" in names
    assert "crasher_mqar_seq32_bits16_seed1" in names
    assert len(names) == len(result.cells)  # no two cells share a file
    assert not out.exists()


def test_two_precisions_of_one_width_get_distinct_files(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, precisions="bf16,fp16", dry_run=True)
    assert {c.name for c in result.cells} == {"bigram_markov_seq16_bits16_bf16", "bigram_markov_seq16_bits16_fp16"}


def test_bits_alias(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, bits="32,16", dry_run=True)
    assert [c.config["cell"]["precision"] for c in result.cells] == ["fp32", "fp16"]
    with pytest.raises(UsageError, match="accepted values: 4, 8, 16, 32"):
        _run(reg, tiny_protocol, tmp_path, bits="3", dry_run=True)


def test_run_writes_complete_results_then_resume_skips(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, precisions="fp32,bf16")
    assert [c.status for c in result.cells] == ["ok", "ok"]
    path = tmp_path / "bigram_markov_seq16_bits32.json"
    data = json.loads(path.read_text())
    assert set(REQUIRED_FIELDS) <= set(data)
    assert data["config"]["protocol"] == tiny_protocol.to_dict()
    assert data["protocol_hash"] == tiny_protocol.hash
    assert data["steps"] == tiny_protocol.steps(16) and data["train_tokens"] == data["steps"] * 4 * 16
    assert len(data["epoch_perplexities"]) == len(data["eval_steps"]) == 2
    assert data["best_perplexity"] == min(data["epoch_perplexities"])
    assert data["forward_flops"] > 0 and data["backward_flops"] > 0
    assert data["total_flops"] == (data["forward_flops"] + data["backward_flops"]) * data["steps"]
    assert (tmp_path / data["checkpoint"]).exists()
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["counts"] == {"ok": 2, "resumed": 0, "failed": 0}

    before = path.stat().st_mtime_ns
    again = _run(reg, tiny_protocol, tmp_path, precisions="fp32,bf16", resume=True)
    assert [c.status for c in again.cells] == ["resumed", "resumed"]
    assert path.stat().st_mtime_ns == before
    assert again.results[0].test_perplexity == data["test_perplexity"]
    # a different protocol is a different cell: not resumed
    changed = _run(reg, tiny_protocol.replace(lr=1e-3), tmp_path, resume=True)
    assert [c.status for c in changed.cells] == ["ok"]


def test_a_failing_cell_is_recorded_and_the_matrix_continues(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, models="crasher,bigram")
    status = {c.name: c for c in result.cells}
    failed = status["crasher_markov_seq16_bits32"]
    assert failed.status == "failed" and "deliberate failure" in failed.error
    assert "RuntimeError" in (tmp_path / failed.traceback_file).read_text()
    assert status["bigram_markov_seq16_bits32"].status == "ok"
    assert not (tmp_path / "crasher_markov_seq16_bits32.json").exists()


def test_repeated_non_finite_loss_fails_the_cell_with_the_reason(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol.replace(max_nonfinite=3), tmp_path, models="nanmodel")
    [cell] = result.cells
    assert cell.status == "failed" and "non-finite for 3 consecutive batches" in cell.error


def test_multi_dataset_summary(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, datasets="markov,mqar")
    data = json.loads((tmp_path / "bigram_multi_dataset.json").read_text())
    ppl = {r.dataset: r.test_perplexity for r in result.results}
    assert data["datasets"]["markov"]["perplexity"]["mean"] == pytest.approx(ppl["markov"])
    assert data["mean_perplexity"] == pytest.approx((ppl["markov"] + ppl["mqar"]) / 2)
    assert data["std_perplexity"] == pytest.approx(abs(ppl["markov"] - ppl["mqar"]) / 2)


def test_summaries_never_mix_precisions_and_give_seed_statistics(reg, tiny_protocol, tmp_path):
    """The finding: a dataset's 'perplexity' was the mean over fp16, fp32 and int8 cells (and seeds)."""
    import statistics

    from scipy import stats

    result = _run(reg, tiny_protocol, tmp_path, datasets="markov,mqar", precisions="fp32,int8", seeds="0,1,2")
    data = json.loads((tmp_path / "bigram_multi_dataset.json").read_text())
    assert data["mean_perplexity"] is None and len(data["groups"]) == 2  # two evaluation precisions: two groups
    for group in data["groups"]:
        assert group["seq_len"] == 16 and group["seeds"] == [0, 1, 2] and group["complete"]
        means = []
        for dataset, entry in group["datasets"].items():
            mine = [r.test_perplexity for r in result.results
                    if r.dataset == dataset and r.precision == group["evaluated_at"]]
            assert len(mine) == 3
            p = entry["perplexity"]
            assert p["mean"] == pytest.approx(statistics.fmean(mine)) and p["n"] == 3
            assert p["std"] == pytest.approx(statistics.stdev(mine))
            half = stats.t.ppf(0.975, 2) * statistics.stdev(mine) / 3 ** 0.5
            assert p["ci95"] == pytest.approx([p["mean"] - half, p["mean"] + half])
            means.append(p["mean"])
        assert group["mean_perplexity"] == pytest.approx(statistics.fmean(means))


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise KeyboardInterrupt  # killed between writing the temp file and renaming it

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(models="bigramm"), "did you mean 'bigram'"),
    (dict(datasets="markv"), "did you mean 'markov'"),
    (dict(precisions="fp8"), "unknown precision 'fp8'"),
    (dict(seq_len="0"), "--seq-len: 0 must be >= 1"),
    (dict(seq_len="abc"), "not an integer"),
    (dict(limit=0), "--limit"),
])
def test_bad_input_is_refused_before_anything_is_written(reg, tiny_protocol, tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=match):
        _run(reg, tiny_protocol, out, **kwargs)
    assert not out.exists()


def test_unwritable_output_dir_is_refused_before_training(reg, tiny_protocol, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="--output-dir"):
        _run(reg, tiny_protocol, blocker / "out")
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="not writable"):
            _run(reg, tiny_protocol, locked / "out")


def test_result_json_matches_the_documented_schema(reg, tiny_protocol, tmp_path):
    import typing

    from mkeval.results import CellResult

    _run(reg, tiny_protocol, tmp_path)
    data = json.loads((tmp_path / "bigram_markov_seq16_bits32.json").read_text())
    hints = typing.get_type_hints(CellResult)
    assert set(data) == set(hints)
    for name, hint in hints.items():
        import types

        is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        allowed = typing.get_args(hint) if is_union else (hint,)
        allowed = tuple(typing.get_origin(a) or a for a in allowed)
        allowed = tuple(type(None) if a is None else a for a in allowed)
        if float in allowed:
            allowed += (int,)
        assert isinstance(data[name], allowed), f"{name}: {data[name]!r} is not {hint}"
    documented = Path(__file__).resolve().parents[1].joinpath("docs", "results.md").read_text()
    for name in hints:
        assert f"`{name}`" in documented, f"field {name} is not documented in docs/results.md"


def test_match_params_sizes_models_to_the_reference(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, models="transformer,bigram", match_params="transformer",
                  datasets="induction")
    by_model = {r.model_name: r for r in result.results}
    target = by_model["transformer"].non_embedding_params
    matched = by_model["bigram"]
    assert abs(matched.non_embedding_params / target - 1) <= 0.03
    info = matched.config["model"]["parameter_match"]
    assert info["reference"] == "transformer" and info["reference_non_embedding_params"] == target
    assert info["non_embedding_params"] == matched.non_embedding_params
    # by hand: the bigram has d*d + d (proj) + d*V + V (head) non-embedding parameters, V = 16 for induction
    d = matched.config["model"]["options"]["d_model"]
    assert matched.non_embedding_params == d * d + d + d * 16 + 16


def test_match_params_refuses_models_without_a_knob(reg, tiny_protocol, tmp_path):
    from mkeval import ModelSpec

    from helpers import Bigram

    reg.add(ModelSpec(name="fixed", build=lambda vocab_size, max_seq_len, size=None: Bigram(vocab_size)))
    with pytest.raises(UsageError, match="'fixed' declares no size_knob"):
        _run(reg, tiny_protocol, tmp_path / "o", models="transformer,fixed", match_params="transformer")
    with pytest.raises(UsageError, match="not among the run's models"):
        _run(reg, tiny_protocol, tmp_path / "o", models="bigram", match_params="transformer")
    assert not (tmp_path / "o").exists()


def test_the_test_split_is_scored_with_the_best_checkpoint_not_the_last(registry, tiny_protocol, tmp_path):
    import torch
    from mkeval import ModelSpec
    from mkeval.engine.batching import make_windows
    from mkeval.engine.evaluation import evaluate_lm
    from mkeval.engine.checkpoint import load_weights

    from helpers import Bigram

    class Unlearning(Bigram):
        """Training maximises the LM loss through the auxiliary loss: validation gets worse every step."""

        def forward(self, input_ids):
            logits = super().forward(input_ids)
            self._last = (logits, input_ids)
            return logits

        def auxiliary_loss(self):
            logits, ids = self._last
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
            return -3 * ce

    registry.add(ModelSpec(name="unlearning", build=lambda vocab_size, max_seq_len, size=None: Unlearning(vocab_size)))
    protocol = tiny_protocol.replace(eval_interval=1, lr=0.05, warmup_steps=0)
    [r] = mkeval.run(models="unlearning", datasets="markov", protocol=protocol, output_dir=tmp_path,
                     registry=registry, device="cpu").results
    assert r.best_step == 1 and r.final_perplexity > r.best_perplexity
    # an independent evaluation of the saved checkpoint reproduces the reported test perplexity
    data = registry.get("dataset", "markov").load(mkeval.runner.data_request(protocol, 16, None, {}))
    model = Unlearning(data.vocab_size)
    load_weights(model, tmp_path / r.checkpoint, torch.device("cpu"))
    test = make_windows(data.splits["test"], 16, cover_tail=True)
    from mkeval.engine.batching import limit_windows

    again = evaluate_lm(model, limit_windows(test, protocol.test_tokens), 4, registry.get("precision", "fp32"),
                        torch.device("cpu"))
    assert again.perplexity == pytest.approx(r.test_perplexity, rel=1e-9)


def test_cell_hash_tracks_what_changes_the_number(reg, tiny_protocol, tmp_path):
    def hashes(**kw):
        return [c.cell_hash for c in _run(reg, kw.pop("protocol", tiny_protocol), tmp_path / "a", dry_run=True,
                                          **kw).cells]

    base = hashes()
    assert hashes() == base
    assert mkeval.run(protocol=tiny_protocol, output_dir=tmp_path / "elsewhere", registry=reg, models="bigram",
                      datasets="markov", dry_run=True).cells[0].cell_hash == base[0]
    assert hashes(protocol=tiny_protocol.replace(lr=1e-4)) != base
    assert hashes(protocol=tiny_protocol.replace(data_seed=7)) != base
    assert hashes(limit_windows=3) != base
    assert hashes(dataset_options={"markov": {"vocab": 8}}) != base
    assert hashes(model_options={"bigram": {"d_model": 8}}) != base


def test_dataset_options_reach_the_dataset(reg, tiny_protocol, tmp_path):
    [r] = _run(reg, tiny_protocol, tmp_path, dataset_options={"markov": {"vocab": 8}}).results
    assert r.config["dataset"]["vocab_size"] == 8 and r.config["dataset"]["info"]["vocab"] == 8


def test_a_dataset_that_cannot_load_is_bad_input_when_it_is_the_only_one(reg, tiny_protocol, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="selective-copy: seq_len 16 is too short"):
        _run(reg, tiny_protocol, out, datasets="selective-copy")
    assert not out.exists()


def test_a_failing_dataset_is_recorded_and_the_others_continue(reg, tiny_protocol, tmp_path):
    result = _run(reg, tiny_protocol, tmp_path, datasets="markov,selective-copy")
    assert [c.status for c in result.cells] == ["ok", "failed"]
    summary = json.loads((tmp_path / "bigram_multi_dataset.json").read_text())
    assert "too short" in summary["failed"]["selective-copy"]
    assert summary["complete"] is False and summary["mean_perplexity"] is None
    assert summary["datasets"]["markov"]["perplexity"]["mean"] == result.results[0].test_perplexity


def test_duplicate_lengths_or_seeds_are_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seq_lens: [16, 16]\n")
    from mkeval.runner.request import read_config

    with pytest.raises(UsageError, match=r"c\.yaml:1: .*seq_lens.*once"):
        read_config(cfg)


def test_malformed_result_files_are_ignored_by_resume_and_report(reg, tiny_protocol, tmp_path):
    from mkeval.report.core import build_report

    _run(reg, tiny_protocol, tmp_path)
    (tmp_path / "junk.json").write_text(json.dumps({"status": "ok", "cell_hash": "x", "model_name": "m"}))
    report = build_report(tmp_path)
    assert [r.model_name for r in report.results] == ["bigram"]
    again = _run(reg, tiny_protocol, tmp_path, resume=True)
    assert [c.status for c in again.cells] == ["resumed"]


def test_resume_loads_no_data_for_finished_cells(reg, tiny_protocol, tmp_path, monkeypatch):
    _run(reg, tiny_protocol, tmp_path)
    import dataclasses

    loads = []
    entry = reg.entry("dataset", "markov")
    monkeypatch.setattr(entry, "spec", dataclasses.replace(entry.spec, load=lambda request: loads.append(request)))

    again = _run(reg, tiny_protocol, tmp_path, resume=True)
    assert [c.status for c in again.cells] == ["resumed"]
    assert loads == []
