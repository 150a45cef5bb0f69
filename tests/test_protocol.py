"""The protocol: validation, a stable hash, YAML loading with file:line errors."""

import hashlib
import json

import pytest

from mkeval import Protocol, UsageError


def test_hash_is_sha256_of_canonical_json():
    p = Protocol()
    fields = {k: v for k, v in p.to_dict().items() if k != "checkpoint_interval"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert p.hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_fields_that_cannot_change_a_number_are_not_hashed():
    # how often a training state is saved changes no number, so results stay resumable when it changes
    assert Protocol(checkpoint_interval=10).hash == Protocol(checkpoint_interval=0).hash
    assert Protocol(checkpoint_interval=10).to_dict()["checkpoint_interval"] == 10


def test_hash_is_stable_and_sensitive():
    assert Protocol().hash == Protocol().hash
    assert Protocol(seq_lens=[128]).hash == Protocol(seq_lens=(128,)).hash  # lists and tuples are one value
    assert Protocol(lr=1e-3).hash != Protocol(lr=2e-3).hash
    assert Protocol(seeds=(0, 1)).hash != Protocol(seeds=(0,)).hash


def test_steps_follow_the_token_budget():
    p = Protocol(batch_size=8, seq_lens=(64,), train_tokens=8 * 64 * 10 + 5)
    assert p.steps(64) == 10


@pytest.mark.parametrize("field,value,match", [
    ("seq_lens", (0,), "seq_lens"),
    ("seq_lens", (-4,), "seq_lens"),
    ("lr", float("nan"), "lr"),
    ("batch_size", 0, "batch_size"),
    ("optimizer", "sgd", "optimizer"),
    ("betas", (0.9, 1.5), "betas"),
])
def test_invalid_values_name_the_field(field, value, match):
    with pytest.raises(UsageError, match=match):
        Protocol(**{field: value})


def test_budget_smaller_than_one_batch_is_refused():
    with pytest.raises(UsageError, match="train_tokens"):
        Protocol(batch_size=16, seq_lens=(128,), train_tokens=100)
