"""RunRequest: one source of run options for the CLI, config files and mkeval.run, with one precedence rule."""

import dataclasses
import subprocess
import sys

import pytest

import mkeval
from mkeval import Protocol, UsageError
from mkeval.runner.request import RunRequest, build_request, read_config


def test_yaml_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.001\nseq_lens: [64, 128]\nmodels: transformer\nwarmup_steps: 5\n")
    request, protocol_values, where = read_config(cfg)
    assert protocol_values == {"lr": 0.001, "seq_lens": (64, 128), "warmup_steps": 5}
    assert request.models == ["transformer"] and where["models"] == f"{cfg}:3"


@pytest.mark.parametrize("text,match", [
    ("lr: 0.001\n\nlearning_rate: 3\n", r"c\.yaml:3: unknown config key 'learning_rate'"),
    ("lr: 0.001\nseq_lens: [64, 128\nbatch_size: 4\n", r"c\.yaml:\d+: malformed YAML"),
    ("lr: 0.001\nbatch_size: -3\n", r"c\.yaml:2: .*batch_size"),
    ("batch_size: many\n", r"c\.yaml:1: batch_size must be a int"),
    ("lr: !!python/object/apply:os.system ['echo hacked']\n", "malformed YAML"),
    ("models: [1, 2]\n", r"c\.yaml:1: must be a comma-separated string or a list of names"),
    ("limit: 0\n", r"c\.yaml:1: must be a positive integer"),
    ("skip_bad_rows: yes please\n", r"c\.yaml:1: must be true or false"),
    ("lr: 0.001\nseq_lenz: 64\n", r"c\.yaml:2: unknown config key 'seq_lenz'; did you mean 'seq_len', 'seq_lens'"),
    ("seq_len: 64\nseq_lens: [32]\n", r"c\.yaml:1: 'seq_len' and 'seq_lens' are the same option; give it once"),
    ("lr: fast\n", r"c\.yaml:1: lr must be a float, got 'fast'"),
])
def test_config_errors_name_file_and_line(tmp_path, text, match):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=match):
        read_config(cfg)


def test_config_keys_may_be_spelled_as_the_flags_and_as_lm_eval(tmp_path):
    """seq_len (--seq-len), model (--model), num_fewshot and output_path (lm-eval) read as the options;
    lr: 1e-3, which YAML 1.1 reads as a string, is the number."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seq_len: 64\nmodel: bk\nnum_fewshot: [0]\noutput_path: o\nlr: 1e-3\n")
    request, protocol_values, where = read_config(cfg)
    assert protocol_values == {"seq_lens": (64,), "fewshot": (0,), "lr": 0.001}
    assert request.models == ["bk"] and request.output_dir == "o" and where["seq_lens"] == f"{cfg}:1"


def test_one_precedence_rule(tmp_path):
    """An explicit value beats the config file, which beats the defaults (and a protocol= object)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models: bk\nseq_lens: [64]\nlr: 0.002\noutput_dir: from_file\nlimit: 3\n")
    request, protocol, _ = build_request(cfg, {"models": "mamba", "seq_lens": "32"}, Protocol(lr=0.5, seeds=(4,)))
    assert request.models == ["mamba"]  # explicit beats the file
    assert protocol.seq_lens == (32,)
    assert protocol.lr == 0.002  # the file beats the protocol object
    assert protocol.seeds == (4,)  # the protocol object beats the defaults
    assert request.output_dir == "from_file" and request.limit == 3  # the file beats the defaults
    bare, default, _ = build_request(None, {}, None)
    assert bare.output_dir is None and bare.get("output_dir", "results") == "results" and default == Protocol()


def test_every_option_is_a_flag_a_config_key_and_a_keyword(tmp_path):
    helptext = subprocess.run([sys.executable, "-m", "mkeval", "run", "--help"], capture_output=True, text=True,
                              env={"COLUMNS": "200", "PATH": ""}).stdout
    for f in dataclasses.fields(RunRequest):
        flag = f.metadata["flag"]
        if flag is not None:
            assert flag in helptext, flag
            shown = f.metadata["default_text"]
            if shown is None:  # a protocol field: its value in Protocol(), as mkeval.run would use it
                value = getattr(Protocol(), f.metadata["protocol"])
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else \
                    f"{value:g}" if isinstance(value, float) else ("on" if value else "off") \
                    if isinstance(value, bool) else str(value)
            assert f"(default: {shown})" in " ".join(helptext.split()), flag
    # and mkeval.run takes each one by the field's name (an unknown one is an error naming it)
    result = mkeval.run(models="transformer", datasets="markov", seq_lens=[32, 64], seeds="0,1", dry_run=True,
                        output_dir=tmp_path)
    assert len(result.cells) == 4
    with pytest.raises(UsageError, match="unknown option.*modelz"):
        mkeval.run(modelz="transformer", dry_run=True)
