"""``report.html``: a results directory's tables, notes and figures on one self-contained page.

The tables are those of ``report.md``, built by the same functions of ``mkeval.report``, so the
numbers and their marks are the same; each mark symbol also carries its meaning as a tooltip.
The figures (``mkeval.report.plots``) are embedded as base64 PNG ``data:`` URIs and the CSS is inline:
the page makes no request, so it opens offline, mailed or copied anywhere. It is written with
the standard library's ``html.escape``: a few tables and images need no template engine.
Imported only by ``mkeval report --html`` (it loads matplotlib). docs/report.md describes the page.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from .. import __version__
from .plots import Plot, draw_all, write_plots
from .core import Report
from .downstream import comparison_table, downstream_table
from .marks import FEWER_SHOTS_SYMBOL, MARK_COLUMN, MARK_SYMBOLS, TIE_SYMBOL, TRUNCATED_SHARE, TRUNCATED_SYMBOL
from ..results import write_text

HTML_FILE = "report.html"
PLOTS_DIR = "plots"

DOWNSTREAM_MARKS = {
    TIE_SYMBOL: "some prompts tied (the first option won)",
    TRUNCATED_SYMBOL: f"over {100 * TRUNCATED_SHARE:.0f}% of prompts cut inside the question",
    FEWER_SHOTS_SYMBOL: "fewer shots fit than asked (see the task's effective_shots)",
}
NO_SCORE = {"degenerate", "skipped", "failed"}
NUMBER = re.compile(r"^[\[(]?[+\-−]?\d|^—$")  # 12.3, +4.5%, [-0.1, +0.2], 100,025 (52,021 act.), —

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0 auto;
       max-width: 1400px; padding: 0 24px 48px; }
h1 { font-size: 22px; margin: 20px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #555; margin: 0 0 8px; } nav a { margin-right: 14px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 12px; }
th, td { border: 1px solid #d5d5d8; padding: 3px 8px; max-width: 480px; }
th, td.num { white-space: nowrap; }
th { background: #f1f1f4; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.status { color: #6b6b70; font-style: italic; }
.mark { color: #b3261e; font-weight: bold; cursor: help; }
ul.notes li { margin: 2px 0; } .warning { color: #b3261e; }
figure { margin: 18px 0 28px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; max-width: 1000px; }
code { font-size: 12px; }
"""


def write_html_report(report: Report, directory: str | Path) -> list[Path]:
    """Draw the figures into ``DIR/plots/`` and write ``DIR/report.html``; returns the page and the plots folder."""
    directory = Path(directory)
    plots = draw_all(report)
    pngs = write_plots(plots, directory / PLOTS_DIR)
    page = directory / HTML_FILE
    write_text(page, render_html(report, [(p, pngs[p.name]) for p in plots]))
    return [page, directory / PLOTS_DIR] if plots else [page]


# --------------------------------------------------------------------------- the page
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _cell(text: str, numeric: bool, marks: dict[str, str]) -> str:
    """One table cell: the text as in the Markdown, each mark symbol wrapped with its meaning as a tooltip."""
    body = _e(text)
    for symbol, meaning in marks.items():
        if symbol in text:
            body = body.replace(_e(symbol), f'<span class="mark" title="{_e(meaning)}">{_e(symbol)}</span>')
    classes = "status" if text in NO_SCORE else "num" if numeric else ""
    return f'<td class="{classes}">{body}</td>' if classes else f"<td>{body}</td>"


def _table(headers: list[str], rows: list[list[str]], left: int,
           marks: dict[int, dict[str, str]] | None = None) -> str:
    """``left`` leading text columns; after them, a column of numbers is right-aligned and kept on one line,
    a column of text (a comparison's method) wraps. ``marks``: column -> symbol -> meaning."""
    marks = marks or {}
    numeric = [i >= left and all(NUMBER.match(row[i]) for row in rows if row[i] and row[i] not in NO_SCORE)
               for i in range(len(headers))]
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, numeric[i], marks.get(i, {})) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _list(items: list[str], cls: str = "notes") -> str:
    return f'<ul class="{cls}">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>" if items else ""


def _lm_marks(report: Report, headers: list[str]) -> dict[int, dict[str, str]]:
    """Column index -> symbol -> the mark's detail (the first cell's, as in the legend)."""
    out: dict[int, dict[str, str]] = {}
    for kind, symbol in MARK_SYMBOLS.items():
        detail = next((r.marks[kind] for r in report.results if kind in (r.marks or {})), None)
        if detail is not None and MARK_COLUMN[kind] in headers:
            out.setdefault(headers.index(MARK_COLUMN[kind]), {})[symbol] = detail
    return out


def _figure(plot: Plot, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="plot-{_e(plot.name)}"><h3>{_e(plot.title)}</h3>'
            f'<img src="data:image/png;base64,{data}" alt="{_e(plot.title)}">'
            f"<figcaption>{_e(plot.caption)} <code>{PLOTS_DIR}/{_e(plot.name)}.png</code></figcaption></figure>")


def render_html(report: Report, plots: list[tuple[Plot, bytes]]) -> str:
    """The page: language-modelling tables and notes, downstream tables, figures, warnings."""
    sections: list[tuple[str, str, str]] = []  # (id, title, body)
    tables = report.lm_tables()
    if tables or report.failed:
        body = ""
        for title, headers, rows in tables:
            body += f"<h3>{_e(title)}</h3>" + _table(headers, rows, 5, _lm_marks(report, headers))
        body += _list(report.notes())
        if report.failed:
            body += "<h3>Failed cells</h3>" + _list([f"{f.get('name', '?')}: {f.get('error')}" for f in report.failed],
                                                    "notes warning")
        sections.append(("lm", "Language modelling", body))
    d = report.downstream
    if d is not None:
        headers, rows = downstream_table(d)
        symbols = {i: DOWNSTREAM_MARKS for i in range(4, len(headers))}
        body = _table(headers, rows, 4, symbols)
        if d.comparisons:
            body += "<h3>Paired comparisons</h3>" + _table(*comparison_table(d), 3)
        if d.skipped:
            body += "<h3>Skipped tasks (no score)</h3>" + _list([f"{t}: {r}" for t, r in sorted(d.skipped.items())])
        if d.failed:
            body += "<h3>Failed tasks</h3>" + _list([f"{t} ({u}): {e}" for u, t, e in d.failed], "notes warning")
        body += _list(d.notes)
        sections.append(("downstream", "Downstream tasks", body))
    if plots:
        sections.append(("plots", "Plots", "".join(_figure(p, png) for p, png in plots)))
    warnings = [f"{f}: could not be read and is not in this report ({why})" for f, why in report.unreadable.items()]
    warnings += [f"{f}: left out ({why})" for f, why in report.old_schema.items()]
    if warnings:
        sections.append(("warnings", "Warnings", _list(warnings, "notes warning")))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    meta = (f"{len(report.results)} cell results, {len(report.summaries)} rows over seeds"
            + (f", {len(d.groups)} downstream model groups" if d is not None else "")
            + (f"; protocol {', '.join(report.protocol_hashes)}" if report.protocol_hashes else "")
            + f"; mkeval {__version__}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>mkeval report: {_e(report.directory)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>mkeval report: {_e(report.directory)}</h1><p class=\"meta\">{_e(meta)}</p>"
            f"<nav>{nav}</nav></header>"
            + "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>' for sid, title, body in sections)
            + "</body></html>\n")
