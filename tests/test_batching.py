"""Windows and batches: targets are the inputs shifted by exactly one position, always."""

import pytest
import torch

from mkeval import TokenSplit, UsageError
from mkeval.engine.batching import limit_windows, make_windows, training_batches


def test_stream_windows_align_targets_with_the_next_token():
    stream = torch.arange(1000) * 7 % 101  # distinct neighbours, so a shift error cannot hide
    w = make_windows(TokenSplit(stream), seq_len=16)
    b = w.all()
    assert b.inputs.shape == (999 // 16, 16) and b.inputs.dtype == torch.long
    for m in range(len(w)):
        start = m * 16
        assert torch.equal(b.inputs[m], stream[start : start + 16])
        assert torch.equal(b.targets[m], stream[start + 1 : start + 17])


def test_every_training_batch_is_offset_by_exactly_one():
    stream = torch.randperm(5000).int()  # every token unique: position is recoverable from value
    w = make_windows(TokenSplit(stream), seq_len=32)
    position = torch.empty(5000, dtype=torch.long)
    position[stream.long()] = torch.arange(5000)
    batches = training_batches(w, batch_size=8, seed=3)
    for _ in range(60):  # more than one pass over the data
        b = next(batches)
        assert torch.equal(position[b.targets], position[b.inputs] + 1)
        assert b.mask.all()


def test_batch_order_depends_only_on_the_seed():
    w = make_windows(TokenSplit(torch.arange(4000)), seq_len=16)
    first = next(training_batches(w, 4, seed=5)).inputs
    again = next(training_batches(w, 4, seed=5)).inputs
    other = next(training_batches(w, 4, seed=6)).inputs
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("length,seq_len,stride", [(1003, 10, None), (1000, 10, 10), (1003, 10, 3), (57, 8, 1)])
def test_eval_windows_score_every_token_after_the_first_exactly_once(length, seq_len, stride):
    stream = torch.arange(length)
    w = make_windows(TokenSplit(stream), seq_len=seq_len, cover_tail=True, stride=stride)
    b = w.all()
    assert sorted(b.targets[b.mask].tolist()) == list(range(1, length))
    assert torch.equal(b.targets, b.inputs + 1)
    assert w.scored_tokens == length - 1


def test_sliding_windows_give_each_target_the_most_context():
    w = make_windows(TokenSplit(torch.arange(100)), seq_len=10, cover_tail=True, stride=2)
    b = w.all()
    # after the first window, every scored target has at least seq_len - stride tokens of context
    context = torch.arange(10)[None, :].expand_as(b.mask)[b.mask][10:]
    assert (context >= 8).all()


def test_loss_mask_follows_the_target_position():
    stream = torch.arange(100)
    mask = stream % 5 == 0
    w = make_windows(TokenSplit(stream, mask), seq_len=9, cover_tail=True)
    b = w.all()
    assert (b.targets[b.mask] % 5 == 0).all()
    assert w.scored_tokens == int(b.mask.sum()) == sum(1 for t in range(1, 100) if t % 5 == 0)


def test_examples_are_one_window_each():
    ex = torch.arange(5 * 9).view(5, 9)
    mask = torch.zeros(5, 9, dtype=torch.bool)
    mask[:, -1] = True
    w = make_windows(TokenSplit(ex, mask), seq_len=8)
    b = w.all()
    assert torch.equal(b.inputs, ex[:, :-1]) and torch.equal(b.targets, ex[:, 1:])
    assert b.mask[:, -1].all() and w.scored_tokens == 5


def test_limit_caps_scored_tokens():
    w = make_windows(TokenSplit(torch.arange(1001)), seq_len=10)
    assert limit_windows(w, max_tokens=55).scored_tokens == 50
    assert len(limit_windows(w, max_windows=3)) == 3


def test_too_short_split_is_an_error_naming_it():
    with pytest.raises(UsageError, match="dataset 'x', split 'test': 5 tokens"):
        make_windows(TokenSplit(torch.arange(5)), seq_len=8, where="dataset 'x', split 'test'")
