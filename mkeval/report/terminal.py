"""The report in the terminal, with ``rich`` (the only part of the report that uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .downstream import comparison_notes, comparison_table, downstream_table

if TYPE_CHECKING:
    from .core import Report

TEXT_COLUMNS = {"model", "dataset", "seq", "trained at", "eval at", "benchmark", "task", "mode", "metric", "pair",
                "method", "seeds", "test"}


def print_report(report: Report, console: Any, width: int = 120) -> None:
    """The tables with ``rich``, each fitting ``width`` columns (cells wrap; nothing is cut)."""
    from rich.markup import escape
    from rich.table import Table

    def table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
        t = Table(title=escape(title), title_justify="left", padding=(0, 1), pad_edge=False, width=None)
        for i, h in enumerate(headers):
            text = h in TEXT_COLUMNS
            t.add_column(escape(h), justify="left" if text else "right", overflow="fold", no_wrap=i < 2)
        for row in rows:
            t.add_row(*map(escape, row))
        return t

    for title, headers, rows in report.lm_tables():
        console.print(table(title, headers, rows), width=width)
    for note in report.notes():
        console.print(escape(note), width=width)
    for f in report.failed:
        console.print(f"[red]failed[/] {escape(str(f.get('name', '?')))}: {escape(str(f.get('error')))}", width=width)
    d = report.downstream
    if d is None:
        return
    console.print(table(f"downstream tasks in {report.directory} (mean ± sample std over n seeds)",
                        *downstream_table(d)), width=width)
    if d.comparisons:
        headers, rows = comparison_table(d)
        title = "paired comparisons (docs/statistics.md)"
        pairs = {row[2] for row in rows}
        if len(pairs) == 1:  # one pair: in the title, and its column's width goes to the numbers
            title = f"paired comparisons, {pairs.pop()} (docs/statistics.md)"
            headers, rows = headers[:2] + headers[3:], [row[:2] + row[3:] for row in rows]
        console.print(table(title, headers, rows), width=width)
        for n in comparison_notes(d):
            console.print(escape(n), width=width)
    for t, r in sorted(d.skipped.items()):
        console.print(f"[yellow]skipped[/] {escape(t)}: {escape(r)}", width=width)
    for u, t, e in d.failed:
        console.print(f"[red]failed[/] {escape(t)} ({escape(u)}): {escape(e)}", width=width)
    for n in d.notes:
        console.print(escape(n), width=width)
