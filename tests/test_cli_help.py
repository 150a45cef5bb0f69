"""`mkeval --help` and every subcommand's help answer the newcomer's questions (issue 16, item 2):
a one-line summary and examples per subcommand, help and a default for every option, help for
every positional, and `mkeval --version`."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mkeval
from mkeval.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _summaries() -> dict[str, str]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a.help for a in action._choices_actions}


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_a_summary_examples_and_documented_options(name):
    sub = _subcommands()[name]
    assert _summaries()[name], f"{name}: no one-line summary in mkeval --help"
    assert sub.epilog and sub.epilog.startswith("examples:")
    examples = [line.strip() for line in sub.epilog.splitlines()[1:] if line.strip()]
    assert examples and all(e.startswith(f"mkeval {name}") for e in examples)
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help, f"mkeval {name} {label}: no help"
        if action.option_strings and not action.required:  # an option: its default is shown
            assert "default" in action.help, f"mkeval {name} {label}: help does not say its default"


def test_examples_name_only_existing_options():
    """Each example of a subcommand parses with that subcommand's parser (no stale flag)."""
    parser = build_parser()
    for name, sub in _subcommands().items():
        for line in sub.epilog.splitlines()[1:]:
            words = line.split()
            if words:
                parser.parse_args(words[1:])  # exits (SystemExit) on an unknown option


def test_version_and_top_level_help():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = subprocess.run([sys.executable, "-m", "mkeval", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"mkeval {version}"
    text = build_parser().format_help()
    assert "``" not in text and "rich" not in text  # no module docstring internals
    assert "examples:" in text and "mkeval run" in text
    assert all(f"    {name}" in text for name in _subcommands())


def test_run_help_shows_defaults_and_every_bit_width():
    text = _subcommands()["run"].format_help().replace("\n", " ")
    text = " ".join(text.split())
    p = mkeval.Protocol()
    for flag, default in (("--train-tokens", p.train_tokens), ("--batch-size", p.batch_size), ("--lr", f"{p.lr:g}"),
                          ("--eval-interval", p.eval_interval), ("--seq-len", ",".join(map(str, p.seq_lens))),
                          ("--seeds", ",".join(map(str, p.seeds))), ("--fewshot", ",".join(map(str, p.fewshot)))):
        assert re.search(rf"{flag} \S+ .*?\(default: {re.escape(str(default))}\)", text), flag
    for bits in ("32 (fp32)", "16 (fp16)", "8 (int8)", "4 (int4)"):
        assert bits in text
    for lm_eval_name in ("--model", "--output_path", "--include_path", "--num_fewshot", "--limit"):
        assert f"{lm_eval_name} " in text


def test_lm_eval_spellings_mean_the_same_options():
    sub = _subcommands()["run"]
    ours = sub.parse_args(["--models", "bk", "--output-dir", "o", "--include-path", "t", "--fewshot", "0,5",
                           "--limit", "8", "--batch-size", "4"])
    theirs = sub.parse_args(["--model", "bk", "--output_path", "o", "--include_path", "t", "--num_fewshot", "0,5",
                             "--limit", "8", "--batch_size", "4"])
    assert vars(ours) == vars(theirs) and ours.models == "bk" and ours.output_dir == "o"
