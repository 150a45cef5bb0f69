"""The report in the terminal, with ``rich`` (the only part of the report that uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .downstream import comparison_notes, comparison_table, downstream_table
from .lm import KEYS

if TYPE_CHECKING:
    from .core import Report

TEXT_COLUMNS = {"model", "dataset", "seq", "trained at", "eval at", "benchmark", "task", "mode", "metric", "pair",
                "method", "seeds", "test"}


KEY_COLUMNS = {c.header for c in KEYS}  # repeated in every part of a split table


def split_columns(headers: list[str], rows: list[list[str]], width: int) -> list[tuple[list[str], list[list[str]]]]:
    """A table too wide for ``width`` columns as several, each with the leading key columns (model,
    dataset, ...) and as many of the others, in order, as fit at their natural widths."""
    # a cell's text plus " │ "; the outer edges have a border and no padding: one less in all
    natural = [max([len(h), *(len(r[i]) for r in rows)]) + 3 for i, h in enumerate(headers)]
    keys = 0
    while keys < len(headers) and headers[keys] in KEY_COLUMNS:
        keys += 1
    if sum(natural) - 1 <= width or keys == 0 or keys == len(headers):
        return [(headers, rows)]
    base, parts, current = sum(natural[:keys]), [], []
    for i in range(keys, len(headers)):
        if current and base + sum(natural[j] for j in current) + natural[i] - 1 > width:
            parts.append(current)
            current = []
        current.append(i)
    parts.append(current)
    columns = [list(range(keys)) + part for part in parts]
    return [([headers[i] for i in cols], [[r[i] for i in cols] for r in rows]) for cols in columns]


def print_report(report: Report, console: Any, width: int = 120) -> None:
    """The tables with ``rich``, each fitting ``width`` columns (cells wrap; nothing is cut)."""
    from rich.markup import escape
    from rich.table import Table

    def table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
        t = Table(title=escape(title), title_justify="left", padding=(0, 1), pad_edge=False, width=None)
        for i, h in enumerate(headers):
            text = h in TEXT_COLUMNS
            # a number is never folded across lines (100,02 / 5 reads as two numbers); text may wrap
            t.add_column(escape(h), justify="left" if text else "right", overflow="fold", no_wrap=i < 2 or not text)
        for row in rows:
            t.add_row(*map(escape, row))
        return t

    for title, headers, rows in report.lm_tables():
        parts = split_columns(headers, rows, width)
        for i, (part_headers, part_rows) in enumerate(parts):
            part_title = title if len(parts) == 1 else f"{title} ({i + 1}/{len(parts)})"
            console.print(table(part_title, part_headers, part_rows), width=width)
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
