"""The embedded synthetic sources, checked against independent computations."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from mkeval import DataRequest
from mkeval_synthetic.sources import induction, markov, mqar, selective_copy


def test_markov_stationary_distribution_matches_a_null_space_solve():
    source = markov.make_source(12, 0.3, np.random.default_rng(0))
    p = source.transition
    # independent: pi spans the null space of (P^T - I)
    null = scipy.linalg.null_space(p.T - np.eye(12))
    pi = null[:, 0] / null[:, 0].sum()
    np.testing.assert_allclose(source.stationary, pi, atol=1e-10)


def test_markov_entropy_rate_matches_its_closed_form_and_samples():
    source = markov.make_source(8, 0.5, np.random.default_rng(1))
    p, pi = source.transition, source.stationary
    by_hand = -sum(pi[i] * p[i, j] * math.log(p[i, j]) for i in range(8) for j in range(8) if p[i, j] > 0)
    assert source.entropy_rate == pytest.approx(by_hand, rel=1e-12)
    # the mean surprise of a long sample under the true chain converges to H
    x = source.sample(400_000, np.random.default_rng(2))
    empirical = -np.mean(np.log(p[x[:-1], x[1:]]))
    assert empirical == pytest.approx(source.entropy_rate, abs=0.01)
    # and the sampled transition frequencies match P
    counts = np.zeros((8, 8))
    np.add.at(counts, (x[:-1], x[1:]), 1)
    freq = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(freq, p, atol=0.01)


def test_markov_dataset_is_deterministic_and_test_split_ignores_the_budget():
    a = markov.load(DataRequest(seq_len=16, train_tokens=10_000, seed=7))
    b = markov.load(DataRequest(seq_len=16, train_tokens=10_000, seed=7))
    c = markov.load(DataRequest(seq_len=16, train_tokens=50_000, seed=7))
    d = markov.load(DataRequest(seq_len=16, train_tokens=10_000, seed=8))
    assert torch.equal(a.splits["train"].tokens, b.splits["train"].tokens)
    assert torch.equal(a.splits["test"].tokens, c.splits["test"].tokens)
    assert not torch.equal(a.splits["test"].tokens, d.splits["test"].tokens)
    assert a.optimal_perplexity == pytest.approx(math.exp(a.info["entropy_rate_nats"]))


def test_mqar_answers_are_the_values_bound_to_the_queried_keys():
    tokens, mask = mqar.generate(50, 65, pairs=8, keys=20, values=30, rng=np.random.default_rng(0))
    for row, m in zip(tokens, mask):
        binding = {int(row[2 * i]): int(row[2 * i + 1]) for i in range(8)}
        assert len(binding) == 8  # distinct keys
        for pos in np.flatnonzero(m):
            assert binding[int(row[pos - 1])] == row[pos]
        assert m.sum() == (65 - 16) // 2


def test_selective_copy_targets_are_the_scattered_tokens_in_order():
    tokens, mask = selective_copy.generate(40, 65, copies=6, data_vocab=10, rng=np.random.default_rng(0))
    for row, m in zip(tokens, mask):
        region = row[: 65 - 6 - 1]
        assert row[65 - 7] == selective_copy.SEP
        assert list(region[region != selective_copy.NOISE]) == list(row[m])
        assert m.sum() == 6


def test_induction_target_is_the_token_after_the_first_trigger():
    tokens, mask = induction.generate(100, 33, vocab=10, rng=np.random.default_rng(0))
    for row, m in zip(tokens, mask):
        triggers = np.flatnonzero(row[:-1] == induction.TRIGGER)
        assert len(triggers) == 2 and triggers[1] == 31
        assert row[-1] == row[triggers[0] + 1] and m.sum() == 1 and m[-1]


@pytest.mark.parametrize("name", ["mqar", "selective-copy", "induction"])
def test_example_sources_fit_the_sequence_length(registry, name):
    data = registry.get("dataset", name).load(DataRequest(seq_len=64, train_tokens=64 * 100))
    for split in data.splits.values():
        assert split.tokens.shape[1] == 65 and split.tokens.max() < data.vocab_size
        assert split.loss_mask[:, 0].sum() == 0
