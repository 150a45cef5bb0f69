"""The protocol: validation, a stable hash, YAML loading with file:line errors."""

import hashlib
import json

import pytest

from mkeval import Protocol, UsageError
from mkeval.protocol import load_config


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


def test_yaml_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\nseq_lens: [64, 128]\nmodels: transformer\nwarmup_steps: 5\n")
    protocol_values, run_values = load_config(cfg)
    assert protocol_values == {"lr": 0.001, "seq_lens": (64, 128), "warmup_steps": 5}
    assert run_values == {"models": "transformer"}


def test_yaml_unknown_key_names_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\n\nlearning_rate: 3\n")
    with pytest.raises(UsageError, match=r"c\.yaml:3: unknown config key 'learning_rate'"):
        load_config(cfg)


def test_malformed_yaml_names_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\nseq_lens: [64, 128\nbatch_size: 4\n")
    with pytest.raises(UsageError, match=r"c\.yaml:\d+: malformed YAML"):
        load_config(cfg)


def test_yaml_bad_value_names_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\nbatch_size: -3\n")
    with pytest.raises(UsageError, match=r"c\.yaml:2: .*batch_size"):
        load_config(cfg)


def test_yaml_wrong_type_names_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: many\n")
    with pytest.raises(UsageError, match=r"c\.yaml:1: batch_size must be a int"):
        load_config(cfg)


def test_yaml_cannot_run_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UsageError, match="malformed YAML"):
        load_config(cfg)
