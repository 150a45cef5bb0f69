"""The ``mkeval`` command: a thin shell over the library. ``rich`` lives here and in the report layer only.

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkeval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="show every registered plugin by kind, with its distribution and load errors")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = sub.add_parser("run", help="train and evaluate the matrix models x datasets x seq lens x precisions x seeds",
                       description="Every option below is also a key of a --config YAML file and a keyword of "
                                   "mkeval.run(...); a flag beats the config file, which beats the default.")
    add_arguments(p)
    p.add_argument("--config", help="YAML file of run options and protocol fields (flags override it; see "
                                    "docs/protocol.md)")

    p = sub.add_parser("report", help="print a comparison table of a results directory; write report.md and .csv")
    p.add_argument("directory")
    p.add_argument("--ignore-bad-files", action="store_true",
                   help="exit 0 even when some result files cannot be read (they are still named)")
    p.add_argument("--baseline", metavar="MODEL",
                   help="the model listed first and compared with every other one (default: the first found)")
    p.add_argument("--html", action="store_true",
                   help="also write report.html (tables and plots on one self-contained page) and plots/*.png")

    p = sub.add_parser("check", help="run the model contract checks on a registered model")
    p.add_argument("model")
    p.add_argument("--size", help="size preset")
    p.add_argument("--seq-len", type=_positive_int("--seq-len"), default=24)
    p.add_argument("--vocab-size", type=_positive_int("--vocab-size"), default=37)

    p = sub.add_parser("data", help="print a dataset's split statistics (documents, lines, words, bytes, tokens)")
    p.add_argument("dataset")
    p.add_argument("--split", help="train, valid (validation) or test (default: all three)")
    p.add_argument("--data-dir", help="root folder of local dataset files")
    p.add_argument("--tokenizer", default="word", help="word (default), byte, bpe[:VOCAB] or a local HF tokenizer")
    p.add_argument("--split-map", help="read a role from another split, e.g. train=valid")
    p.add_argument("--seq-len", type=_positive_int("--seq-len"), default=128,
                   help="sequence length (example-based synthetic datasets depend on it)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("bench", help="run a registered benchmark (e.g. bk-core, mamba-scan)")
    p.add_argument("name")
    p.add_argument("--seq-len", help="comma-separated sequence lengths")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"))
    p.add_argument("--models", help="comma-separated model names")
    p.add_argument("--repeats", type=_positive_int("--repeats"))
    p.add_argument("--device")
    p.add_argument("--output", help="JSON file for the results (default: bench_NAME.json)")
    add_interop_parsers(sub)
    return parser


def add_interop_parsers(sub: Any) -> None:
    """``export`` and ``lm-eval``: checkpoints to other tools (docs/interop.md)."""
    p = sub.add_parser("export", help="a checkpoint as a transformers model folder (--format hf), or a run's "
                                      "downstream results in lm-eval's output format (--format lm-eval)")
    p.add_argument("checkpoint", help="hf: a checkpoint directory (results/checkpoints/CELL); lm-eval: a run's "
                                      "output directory")
    p.add_argument("--format", default="hf", choices=["hf", "lm-eval"],
                   help="hf: transformers (default); lm-eval: results.json and samples_<task>.jsonl per model and mode")
    p.add_argument("--output", required=True, help="folder to create (must be new or empty)")

    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness on a checkpoint: mkeval lm-eval DIR -- --tasks ...",
                       description="Runs `lm-eval run --model mkeval --model_args pretrained=DIR` with the arguments "
                                   "after `--` (e.g. --tasks, --include_path, --output_path, --limit).")
    p.add_argument("checkpoint", help="checkpoint directory")
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
    with RunProgress() as progress:
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


class RunProgress:
    """Progress bars for the matrix and the current cell (step, loss, tokens/s, ETA)."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=console, transient=False)
        self.matrix = None
        self.cell = None
        self.tasks = None

    def __enter__(self) -> "RunProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event: str, **info: Any) -> None:
        if event == "plan" and info["cells"]:
            self.matrix = self.bars.add_task("matrix", total=len(info["cells"]), info="")
        elif event == "cell_start":
            if self.cell is not None:
                self.bars.remove_task(self.cell)
            self.cell = self.bars.add_task(info["name"], total=info["steps"], info="")
        elif event == "step" and self.cell is not None:
            self.bars.update(self.cell, completed=info["step"],
                             info=f"loss {info['loss']:.3f}  {info['tokens_per_second']:,.0f} tok/s")
        elif event == "eval" and self.cell is not None:
            self.bars.console.print(f"  step {info['step']}/{info['steps']}: validation perplexity {info['perplexity']:.3f}")
        elif event == "downstream_plan":
            self.tasks = self.bars.add_task("downstream", total=len(info["units"]) * len(info["tasks"]), info="")
        elif event == "task_start" and getattr(self, "tasks", None) is not None:
            self.bars.update(self.tasks, info=f"{info['unit']}: {info['task']}")
        elif event == "task_end" and getattr(self, "tasks", None) is not None:
            self.bars.advance(self.tasks)
            if not info["status"].startswith("ok"):
                self.bars.console.print(f"{info['unit']}: task {info['task']}: {info['status']}")
        elif event == "jobs":  # --executor ray: the whole cluster's jobs
            if self.matrix is None:
                self.matrix = self.bars.add_task("jobs", total=info["total"], info="")
            self.bars.update(self.matrix, completed=info["finished"] + info["failed"],
                             info=f"{len(info['running'])} running, {info['failed']} failed")
            for name, status in info["ended"]:
                self.bars.console.print(f"{name}: {status}")
        elif event == "cell_end" and self.matrix is not None:
            self.bars.advance(self.matrix)
            self.bars.console.print(f"{info['name']}: {info['status']}")


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
