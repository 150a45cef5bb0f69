"""Windows and batches: targets are the inputs shifted by exactly one position, always."""

import torch

from mkeval import TokenSplit
from mkeval.batching import limit_windows, make_windows, training_batches


def test_stream_windows_align_targets_with_the_next_token():
    stream = torch.arange(1000) * 7 % 101  # distinct neighbours, so a shift error cannot hide
    w = make_windows(TokenSplit(stream), seq_len=16)
    assert w.inputs.shape == (999 // 16, 16)
    for m in range(len(w)):
        start = m * 16
        assert torch.equal(w.inputs[m], stream[start : start + 16])
        assert torch.equal(w.targets[m], stream[start + 1 : start + 17])


def test_every_training_batch_is_offset_by_exactly_one():
    stream = torch.randperm(5000)  # every token unique: position is recoverable from value
    w = make_windows(TokenSplit(stream), seq_len=32)
    position = torch.empty(5000, dtype=torch.long)
    position[stream] = torch.arange(5000)
    batches = training_batches(w, batch_size=8, seed=3)
    for _ in range(60):  # more than one pass over the data
        b = next(batches)
        assert torch.equal(position[b.targets], position[b.inputs] + 1)


def test_batch_order_depends_only_on_the_seed():
    w = make_windows(TokenSplit(torch.arange(4000)), seq_len=16)
    first = [next(training_batches(w, 4, seed=5)).inputs for _ in range(1)]
    again = [next(training_batches(w, 4, seed=5)).inputs for _ in range(1)]
    other = [next(training_batches(w, 4, seed=6)).inputs for _ in range(1)]
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])


def test_eval_windows_score_every_token_after_the_first_exactly_once():
    stream = torch.arange(1003)
    w = make_windows(TokenSplit(stream), seq_len=10, cover_tail=True)
    scored = w.targets[w.mask]
    assert sorted(scored.tolist()) == list(range(1, 1003))
    assert torch.equal(w.targets, w.inputs + 1)


def test_loss_mask_follows_the_target_position():
    stream = torch.arange(100)
    mask = stream % 5 == 0
    w = make_windows(TokenSplit(stream, mask), seq_len=9, cover_tail=True)
    assert (w.targets[w.mask] % 5 == 0).all()
    assert w.mask.sum() == sum(1 for t in range(1, 100) if t % 5 == 0)


def test_examples_are_one_window_each():
    ex = torch.arange(5 * 9).view(5, 9)
    mask = torch.zeros(5, 9, dtype=torch.bool)
    mask[:, -1] = True
    w = make_windows(TokenSplit(ex, mask), seq_len=8)
    assert torch.equal(w.inputs, ex[:, :-1]) and torch.equal(w.targets, ex[:, 1:])
    assert w.mask[:, -1].all() and w.mask.sum() == 5


def test_limit_caps_scored_tokens():
    w = make_windows(TokenSplit(torch.arange(1001)), seq_len=10)
    assert limit_windows(w, max_tokens=55).scored_tokens == 50
    assert len(limit_windows(w, max_windows=3)) == 3
