"""The ``mkeval`` command line's parser: every subcommand, its one-line summary, examples, and each
option's help with its default (``mkeval COMMAND --help``). The commands themselves are in ``cli.py``."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from .runner.request import add_arguments


def _positive_int(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an integer, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option} must be positive, got {value}")
        return value

    return parse


DESCRIPTION = """\
Train sequence models from scratch, fine-tune and evaluate them side by side under one
protocol: language-modelling perplexity, downstream tasks (GLUE, SuperGLUE, SQuAD, MMLU),
precisions and sequence lengths. Models, datasets, precisions, tasks and benchmarks are
plugins (mkeval list). Exit codes: 0 success, 1 failed cells or checks, 2 bad input."""

EPILOG = """\
examples:
  mkeval list
  mkeval run --models bk,mamba --datasets markov --train-tokens 65536 --seeds 0,1,2
  mkeval run --models bk,mamba --tasks rte,mmlu_anatomy --data-dir ../shared/data --limit 32
  mkeval report results --html
Run `mkeval COMMAND --help` for a command's options; docs/ has the manual."""


LIST_KINDS = ("models", "datasets", "precisions", "tasks", "benchmarks", "readers", "groups")


def _command(sub: Any, name: str, summary: str, examples: Sequence[str], more: str = "") -> argparse.ArgumentParser:
    """A subcommand with a one-line summary (in ``mkeval --help``) and examples (in its own --help)."""
    text = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + "." + (f" {more}" if more else ""),
                          epilog=text, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mkeval", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (default: off)")
    parser.add_argument("--version", action="version", version=f"mkeval {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _run_parsers(sub)
    _tool_parsers(sub)
    add_interop_parsers(sub)
    return parser


def _run_parsers(sub: Any) -> None:
    """``list``, ``run`` and ``report``."""
    p = _command(sub, "list", "show every registered plugin by kind, with its distribution and load errors",
                 ["mkeval list", "mkeval list models", "mkeval list tasks --json"])
    p.add_argument("kind", nargs="?", choices=LIST_KINDS, metavar="KIND",
                   help=f"only this kind: {', '.join(LIST_KINDS)} (default: every kind)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (default: off)")

    p = _command(sub, "run", "train and evaluate the matrix models x datasets x seq lens x precisions x seeds",
                 ["mkeval run --models bk,mamba --datasets markov --train-tokens 65536",
                  "mkeval run --models bk,mamba --datasets wikitext-2,ptb --bits 32,8,4 --seeds 0,1,2",
                  "mkeval run --models bk --tasks glue --data-dir ../shared/data --limit 64",
                  "mkeval run --config examples/protocol.yaml --models bk"],
                 "Every option below is also a key of a --config YAML file and a keyword of mkeval.run(...); a flag "
                 "beats the config file, which beats the default. Results: one JSON per cell in --output-dir "
                 "(docs/results.md).")
    add_arguments(p)
    p.add_argument("--config", metavar="FILE", help="YAML file of run options and protocol fields (flags override "
                                                    "it; examples/protocol.yaml lists every field; default: none)")

    p = _command(sub, "report", "print a comparison table of a results directory; write report.md and .csv",
                 ["mkeval report results", "mkeval report results --html --baseline transformer"])
    p.add_argument("directory", help="a run's --output-dir (the result JSON files, summaries and checkpoints)")
    p.add_argument("--ignore-bad-files", action="store_true",
                   help="exit 0 even when some result files cannot be read (they are still named; default: off, exit 1)")
    p.add_argument("--baseline", metavar="MODEL",
                   help="the model listed first and compared with every other one (default: the first found)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html (tables and plots on one self-contained page) and plots/*.png "
                        "(default: off)")



def _tool_parsers(sub: Any) -> None:
    """``check``, ``data`` and ``bench``."""
    p = _command(sub, "check", "run the model contract checks (shapes, strict causality, determinism, ...) on a "
                 "registered model", ["mkeval check bk", "mkeval check mamba --size small --seq-len 64"])
    p.add_argument("model", help="a registered model name (mkeval list shows them)")
    p.add_argument("--size", help="size preset, e.g. tiny, small, base (default: the model's default)")
    p.add_argument("--seq-len", type=_positive_int("--seq-len"), default=24,
                   help="sequence length of the check inputs, a positive integer (default: %(default)s)")
    p.add_argument("--vocab-size", type=_positive_int("--vocab-size"), default=37,
                   help="vocabulary size of the check model, a positive integer (default: %(default)s)")

    p = _command(sub, "data", "print a dataset's split statistics (documents, lines, words, bytes, tokens)",
                 ["mkeval data ptb --data-dir ../shared/data",
                  "mkeval data ptb --data-dir ../shared/data --split test --json",
                  "mkeval data wikitext-2 --tokenizer bpe:8192",
                  "mkeval data markov --seq-len 256"],
                 "Each split on disk, as a run would tokenize it; absent splits are listed, not required. A word "
                 "or BPE vocabulary is fitted on train, else on valid (the output says which), never on test. "
                 "Without --data-dir the dataset is downloaded from the Hugging Face hub (docs/datasets.md).")
    p.add_argument("dataset", help="a registered dataset: wikitext-2, wikitext-2-raw, wikitext-103, "
                                   "wikitext-103-raw, ptb, c4, pile, the synthetic markov, mqar, selective-copy, "
                                   "induction, or a plugin's (`mkeval list` shows them all)")
    p.add_argument("--split", metavar="SPLIT",
                   help="train, valid (also validation, dev) or test; that split must be on disk (default: every "
                        "split on disk)")
    p.add_argument("--data-dir", metavar="ROOT",
                   help="root folder of local dataset files, one folder per dataset (docs/datasets.md; default: "
                        "none, download from the Hugging Face hub)")
    p.add_argument("--tokenizer", default="word",
                   help="word, word:N, byte, bpe, bpe:N or a local Hugging Face tokenizer folder "
                        "(default: %(default)s)")
    p.add_argument("--split-map", metavar="ROLE=SPLIT[,...]",
                   help="read a role from another split, e.g. train=valid; roles and splits are train, valid, test "
                        "(default: none)")
    p.add_argument("--seq-len", type=_positive_int("--seq-len"), default=128,
                   help="sequence length, a positive integer; example-based synthetic datasets depend on it "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")

    p = _command(sub, "bench", "run a registered benchmark and print its table (speed and memory as ratios "
                 "measured in the same process)",
                 ["mkeval bench bk-core", "mkeval bench scaling --models bk,mamba,transformer --seq-len 256,1024",
                  "mkeval bench executors --repeats 5"])
    p.add_argument("name", help="a registered benchmark: bk-core, mamba-scan, scaling, executors, or a plugin's "
                                "(mkeval list shows them)")
    p.add_argument("--seq-len", metavar="N,M", help="comma-separated sequence lengths (default: the benchmark's own)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), metavar="N",
                   help="batch size, a positive integer (default: the benchmark's own)")
    p.add_argument("--models", metavar="A,B", help="comma-separated model names, for benchmarks that compare "
                                                   "models (default: the benchmark's own)")
    p.add_argument("--repeats", type=_positive_int("--repeats"), metavar="N",
                   help="timed repetitions per measurement, a positive integer; the median is reported (default: "
                        "the benchmark's own)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the benchmark's own, mostly cuda when "
                                    "available)")
    p.add_argument("--output", metavar="FILE", help="JSON file for the results (default: bench_NAME.json)")


def add_interop_parsers(sub: Any) -> None:
    """``export`` and ``lm-eval``: checkpoints to other tools (docs/interop.md)."""
    p = _command(sub, "export", "write a checkpoint as a transformers model folder (--format hf), or a run's "
                 "downstream results in lm-eval's output format (--format lm-eval)",
                 ["mkeval export results/checkpoints/CELL --output bk-hf",
                  "mkeval export results --format lm-eval --output lm-eval-results"])
    p.add_argument("checkpoint", help="hf: a checkpoint directory (results/checkpoints/CELL); lm-eval: a run's "
                                      "output directory")
    p.add_argument("--format", default="hf", choices=["hf", "lm-eval"],
                   help="hf: transformers (default); lm-eval: results.json and samples_<task>.jsonl per model and mode")
    p.add_argument("--output", required=True, help="folder to create (must be new or empty; required)")

    p = _command(sub, "lm-eval", "run lm-evaluation-harness on a checkpoint: mkeval lm-eval DIR -- --tasks ...",
                 ["mkeval lm-eval results/checkpoints/CELL -- --tasks lambada_openai --limit 100"],
                 "Runs `lm-eval run --model mkeval --model_args pretrained=DIR` with the arguments after `--` "
                 "(e.g. --tasks, --include_path, --output_path, --limit).")
    p.add_argument("checkpoint", help="checkpoint directory (results/checkpoints/CELL)")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="lm-eval arguments, after --")
