"""The ``mkeval`` command: a thin shell over the library (``rich`` is used here, in ``progress.py`` and in the report layer).

Exit codes: 0 success; 1 a run finished with failed cells, or ``check`` found a broken
contract; 2 bad input (nothing written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.logging import RichHandler
from rich.table import Table

from .errors import MkevalError, UsageError
from .runner.request import add_arguments, cli_values

console = Console(stderr=True)
out = Console()
if not out.is_terminal:  # piped or captured output: tables are laid out for 120 columns
    out = Console(width=120)


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

    p = _command(sub, "list", "show every registered plugin by kind, with its distribution and load errors",
                 ["mkeval list", "mkeval list --json"])
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
    add_interop_parsers(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"list": cmd_list, "run": cmd_run, "report": cmd_report, "check": cmd_check, "data": cmd_data,
                "bench": cmd_bench, "export": cmd_export, "lm-eval": cmd_lm_eval}[args.command](args)
    except (UsageError, MkevalError) as exc:
        console.print(f"[bold red]mkeval: error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted; finished cells are saved, rerun with --resume to continue")
        return 130


# ---------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from .registry.manager import get_registry

    registry = get_registry()
    if args.json:
        data: dict[str, Any] = {
            kind: [{"name": e.spec.name, "plugin": e.plugin, "distribution": e.distribution,
                    "description": e.spec.description} for e in sorted(entries.values(), key=lambda e: e.spec.name)]
            for kind, entries in registry.entries.items()
        }
        data["clashes"] = [{"kind": k, "name": n, "distributions": [e.distribution for e in es]}
                           for (k, n), es in registry.clashes.items()]
        data["load_errors"] = [{"plugin": e.plugin, "distribution": e.distribution, "error": e.error}
                               for e in registry.load_errors]
        out.print_json(json.dumps(data))
        return 0
    for kind, entries in registry.entries.items():
        table = Table(title=f"{kind}s", title_justify="left")
        for col in ("name", "distribution", "plugin", "description"):
            table.add_column(col)
        for e in sorted(entries.values(), key=lambda e: e.spec.name):
            table.add_row(e.spec.name, e.distribution, e.plugin, e.spec.description)
        for (k, name), es in registry.clashes.items():
            if k == kind:
                table.add_row(f"[red]{name}[/]", " and ".join(e.distribution for e in es), "",
                              "[red]registered by more than one plugin: unusable until one is removed[/]")
        out.print(table)
    if registry.load_errors:
        table = Table(title="plugins that failed to load", title_justify="left")
        for col in ("plugin", "distribution", "error"):
            table.add_column(col)
        for e in registry.load_errors:
            table.add_row(e.plugin, e.distribution, e.error)
        out.print(table)
    return 0


# ---------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    values = {k: v for k, v in cli_values(args).items() if v is not None}
    if args.dry_run:
        result = run(config=args.config, **values)
        table = Table(title=f"{len(result.cells)} cells (protocol {result.protocol.hash})", title_justify="left")
        for col in ("cell", "hash", "status"):
            table.add_column(col)
        for c in result.cells:
            table.add_row(c.name, c.cell_hash, c.status)
        if result.cells:
            out.print(table)
        if result.tasks:
            table = Table(title=f"{len(result.tasks)} downstream tasks", title_justify="left")
            for col in ("task", "kind", "status"):
                table.add_column(col)
            for config, fingerprint, skipped in result.tasks:
                table.add_row(config.name, config.kind, escape(f"skipped: {skipped}") if skipped else
                              f"data {fingerprint}")
            out.print(table)
        return 0
    from .engine.distributed import launched

    if launched() and os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 alone reports
        run(config=args.config, **values)
        return 0
    from .progress import run_progress

    with run_progress(console) as progress:
        result = run(config=args.config, progress=progress, **values)
    for c in result.failed:
        console.print(f"[red]failed[/] {c.name}: {escape(c.error or '')} "
                      f"(traceback: {result.output_dir / c.traceback_file})")
    for unit, task, error in result.failed_tasks:
        console.print(f"[red]failed[/] task {task} of {unit}: {escape(error)}")
    ok = sum(1 for c in result.cells if c.status in ("ok", "resumed"))
    if result.cells:
        console.print(f"{ok}/{len(result.cells)} cells finished; results in {result.output_dir}.")
    if result.downstream_files:
        console.print(f"downstream results: {', '.join(p.name for p in result.downstream_files)}")
    console.print(f"Compare them with: mkeval report {result.output_dir}")
    return 1 if result.failed or result.failed_tasks else 0


# ---------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, print_report, write_report

    report = build_report(args.directory, baseline=args.baseline)
    print_report(report, out)
    written = write_report(report, args.directory)
    if args.html:  # imported only here: it loads matplotlib
        from .report.html import write_html_report

        written += write_html_report(report, args.directory)
    console.print(f"wrote {', '.join(str(p) for p in written)}")
    for name, why in report.old_schema.items():
        console.print(f"[yellow]warning:[/] {escape(name)} left out: {escape(why)}")
    for name, why in report.unreadable.items():
        console.print(f"[bold red]warning:[/] {escape(name)} cannot be read and is not in the report: {escape(why)}")
    if report.unreadable and not args.ignore_bad_files:
        console.print(f"{len(report.unreadable)} unreadable file(s); pass --ignore-bad-files to accept a report "
                      "without them")
        return 1
    return 0


# ---------------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    from .engine.checks import check_model

    results = check_model(args.model, vocab_size=args.vocab_size, seq_len=args.seq_len, size=args.size)
    table = Table(title=f"contract checks: {args.model}", title_justify="left")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for r in results:
        table.add_row(r.name, "[green]pass[/]" if r.passed else "[red]FAIL[/]", escape(r.detail))
    out.print(table)
    return 0 if all(r.passed for r in results) else 1


# ---------------------------------------------------------------------------- data
def cmd_data(args: argparse.Namespace) -> int:
    from .data.stats import split_statistics

    stats = split_statistics(args.dataset, split=args.split, data_dir=args.data_dir, tokenizer=args.tokenizer,
                             split_map=args.split_map, seq_len=args.seq_len)
    if args.json:
        out.print_json(json.dumps(stats))
        return 0
    columns = ["split", "source_split", "documents", "lines", "words", "bytes", "tokens", "vocab_size"]
    table = Table(title=f"{args.dataset} ({stats['tokenizer']} tokenizer)", title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if "split" in c else "right")
    for name, row in stats["splits"].items():
        table.add_row(name, *[_cell(row.get(c)) if not isinstance(row.get(c), int) else f"{row[c]:,}"
                              for c in columns[1:]])
    out.print(table)
    for name, looked in stats["absent_splits"].items():
        where = f" (looked for: {', '.join(looked)})" if looked else ""
        out.print(escape(f"{name}: absent{where}"), highlight=False)
    if stats["vocab_note"]:
        out.print(escape(f"vocabulary: {stats['vocab_note']}"), highlight=False)
    elif stats["vocab_source"] is not None:
        out.print(f"vocabulary: fitted on {stats['vocab_source']}", highlight=False)
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .registry.manager import get_registry
    from .results import write_json
    from .runner.request import parse_option

    spec = get_registry().get("benchmark", args.name, option="mkeval bench")
    result = spec.run(seq_lens=parse_option("seq_lens", args.seq_len, "--seq-len"), batch_size=args.batch_size,
                      models=parse_option("models", args.models), repeats=args.repeats, device=args.device)
    table = Table(title=f"bench {args.name}", title_justify="left")
    for c in result.columns:
        table.add_column(c, justify="right")
    for row in result.rows:
        table.add_row(*[_cell(row.get(c)) for c in result.columns])
    out.print(table)
    for note in result.notes:
        out.print(escape(note))
    path = Path(args.output or f"bench_{args.name}.json")
    write_json(path, {"benchmark": args.name, "rows": result.rows, "notes": result.notes, "meta": result.meta})
    console.print(f"wrote {path}")
    if result.plot is not None:
        figure = path.with_suffix(".png")
        result.plot(result, figure)
        console.print(f"wrote {figure}")
    return 0


# ---------------------------------------------------------------------------- export, lm-eval
def cmd_export(args: argparse.Namespace) -> int:
    from .interop.export import export_checkpoint

    if args.format == "lm-eval":
        from .interop.lm_eval_export import export_run_lm_eval

        written = export_run_lm_eval(args.checkpoint, args.output)
        console.print(f"wrote {len(written)} lm-eval results file(s) under {args.output}")
        return 0

    path = export_checkpoint(args.checkpoint, args.output, format=args.format)
    console.print(f"wrote {path}; load it with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r}) "
                  "and AutoTokenizer.from_pretrained (a bk model needs `import mkeval` first)")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from .interop.lm_eval import run_lm_eval

    run_lm_eval(args.checkpoint, args.lm_eval_args)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
