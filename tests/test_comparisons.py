"""The headline comparisons end to end, on embedded data and on real text."""


import mkeval
from mkeval import Protocol

from conftest import shared_data_or_skip

SMALL = Protocol(batch_size=8, seq_lens=(32,), train_tokens=8 * 32 * 12, eval_interval=6, warmup_steps=2,
                 eval_tokens=2048, test_tokens=4096)


def test_bk_and_mamba_matched_in_parameters(registry, tmp_path):
    result = mkeval.run(models="bk,mamba", datasets="markov", match_params="bk", protocol=SMALL,
                        output_dir=tmp_path, registry=registry, device="cpu")
    by_model = {r.model_name: r for r in result.results}
    assert set(by_model) == {"bk", "mamba"}
    bk, mamba = by_model["bk"].non_embedding_params, by_model["mamba"].non_embedding_params
    assert abs(mamba / bk - 1) <= 0.03
    assert by_model["mamba"].config["model"]["parameter_match"]["reference_non_embedding_params"] == bk


def test_bk_and_mamba_train_on_real_ptb_text(registry, tmp_path, monkeypatch):
    root = shared_data_or_skip()
    monkeypatch.setenv("MKEVAL_CACHE", str(tmp_path / "cache"))
    result = mkeval.run(models="bk,mamba", datasets="ptb", data_dir=root, split_map="train=valid",
                        protocol=SMALL.replace(test_tokens=0), output_dir=tmp_path / "out", registry=registry,
                        device="cpu")
    assert [c.status for c in result.cells] == ["ok", "ok"]
    for r in result.results:
        assert r.config["dataset"]["info"]["split_map"] == {"train": "valid", "valid": "valid", "test": "test"}
        assert r.test_tokens == 82_430  # the whole official test split
        vocab = r.config["dataset"]["vocab_size"]
        assert r.test_perplexity < vocab  # learned something beyond uniform
        assert r.test_word_perplexity is not None and r.test_bits_per_byte is not None
