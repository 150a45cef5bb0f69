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
from .cli_parser import build_parser
from .runner.request import cli_values

console = Console(stderr=True)
out = Console()
if not out.is_terminal:  # piped or captured output: tables are laid out for 120 columns
    out = Console(width=120)


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
    kinds = {k: v for k, v in registry.entries.items() if args.kind is None or f"{k}s" == args.kind}
    if args.json:
        data: dict[str, Any] = {
            kind: [{"name": e.spec.name, "plugin": e.plugin, "distribution": e.distribution,
                    "description": e.spec.description} for e in sorted(entries.values(), key=lambda e: e.spec.name)]
            for kind, entries in kinds.items()
        }
        data["clashes"] = [{"kind": k, "name": n, "distributions": [e.distribution for e in es]}
                           for (k, n), es in registry.clashes.items()]
        data["load_errors"] = [{"plugin": e.plugin, "distribution": e.distribution, "error": e.error}
                               for e in registry.load_errors]
        out.print_json(json.dumps(data))
        return 0
    for kind, entries in kinds.items():
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
            jobs = [j for j in result.plan.jobs if j.kind == "task"]
            units = list(dict.fromkeys(j.unit.name for j in jobs))
            if units:  # each task runs once per unit (a model at a training precision and seed)
                out.print(escape(f"{len(jobs)} downstream jobs: {len(result.tasks)} task(s) for each of "
                                 f"{len(units)} unit(s): {', '.join(units)}"), highlight=False)
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
