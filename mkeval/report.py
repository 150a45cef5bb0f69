"""Comparison tables from result files alone (no torch import): rich in the terminal, Markdown and CSV on disk."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UsageError
from .results import SUMMARY_FILE, CellResult, read_results, write_text


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[CellResult], Any]
    fmt: str = "{}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%"


COLUMNS = [
    Column("model", lambda r: r.model_name),
    Column("dataset", lambda r: r.dataset),
    Column("seq", lambda r: r.seq_len),
    Column("prec", lambda r: r.precision),
    Column("seed", lambda r: r.seed),
    Column("params", lambda r: r.non_embedding_params, "{:,}"),  # non-embedding
    Column("test ppl", lambda r: r.test_perplexity, "{:.3f}"),
    Column("optimum", lambda r: r.optimal_perplexity, "{:.3f}"),
    Column("gap", lambda r: r.perplexity_gap, "pct"),
    Column("acc", lambda r: r.test_accuracy, "{:.3f}"),
    Column("word ppl", lambda r: r.test_word_perplexity, "{:.2f}"),
    Column("bpb", lambda r: r.test_bits_per_byte, "{:.4f}"),
    Column("val ppl", lambda r: r.best_perplexity, "{:.3f}"),
    Column("tok/s", lambda r: r.tokens_per_second, "{:,.0f}"),
    Column("MiB", lambda r: r.peak_memory_mb, "{:,.0f}"),
    Column("train s", lambda r: r.training_time, "{:.1f}"),
    Column("GFLOP/step", lambda r: (r.forward_flops + r.backward_flops) / 1e9, "{:.3f}"),
]


def _format(column: Column, result: CellResult) -> str:
    value = column.value(result)
    if value is None:
        return ""
    try:
        return _pct(value) if column.fmt == "pct" else column.fmt.format(value)
    except (TypeError, ValueError):  # a hand-edited file: show the value as it is
        return str(value)


@dataclass
class Report:
    results: list[CellResult]
    failed: list[dict[str, Any]]

    @property
    def protocol_hashes(self) -> list[str]:
        return sorted({r.protocol_hash for r in self.results})

    def rows(self) -> list[list[str]]:
        return [[_format(c, r) for c in COLUMNS] for r in self.results]

    def headers(self) -> list[str]:
        return [c.header for c in COLUMNS]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.headers()) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        if self.failed:
            lines += ["", "Failed cells:", ""]
            lines += [f"- `{f.get('name', '?')}`: {f.get('error')}" for f in self.failed]
        if len(self.protocol_hashes) > 1:
            lines += ["", f"Warning: these results come from {len(self.protocol_hashes)} different protocols "
                          f"({', '.join(self.protocol_hashes)}); compare rows with the same protocol only."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c.header for c in COLUMNS])
        for r in self.results:
            writer.writerow(["" if c.value(r) is None else c.value(r) for c in COLUMNS])
        return buf.getvalue()


def build_report(directory: str | Path) -> Report:
    """Read every cell result (and the run summary's failures) in ``directory``."""
    path = Path(directory)
    if not path.is_dir():
        raise UsageError(f"report: {path} is not a directory")
    results = read_results(path)
    failed: list[dict[str, Any]] = []
    summary = path / SUMMARY_FILE
    if summary.exists():
        try:
            failed = [c for c in json.loads(summary.read_text())["cells"]
                      if isinstance(c, dict) and c.get("status") == "failed"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"report: {summary} is not a valid run summary ({exc})") from exc
    if not results and not failed:
        raise UsageError(f"report: no result files in {path}; run `mkeval run --output-dir {path}` first")
    results.sort(key=lambda r: (r.dataset, r.seq_len, r.precision, r.seed, r.model_name))
    return Report(results, failed)


def write_report(report: Report, directory: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.csv`` in ``directory``."""
    md, csv_path = Path(directory) / "report.md", Path(directory) / "report.csv"
    write_text(md, report.markdown())
    write_text(csv_path, report.csv())
    return md, csv_path
