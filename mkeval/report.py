"""Comparison tables from result files alone (no torch import): rich in the terminal, Markdown and CSV on disk."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
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
    Column("Δppl", lambda r: r.relative_perplexity_delta, "pct"),  # vs the same checkpoint at its training precision
    Column("weights MiB", lambda r: r.model_size_mb, "{:.2f}"),
    Column("val ppl", lambda r: r.best_perplexity, "{:.3f}"),
    # an evaluation-only row (precision sweep) did not train: its training numbers are its training cell's
    Column("tok/s", lambda r: None if r.evaluated_checkpoint_of else r.tokens_per_second, "{:,.0f}"),
    Column("MiB", lambda r: r.peak_memory_mb, "{:,.0f}"),
    Column("train s", lambda r: None if r.evaluated_checkpoint_of else r.training_time, "{:.1f}"),
    Column("GFLOP/step", lambda r: None if r.evaluated_checkpoint_of else (r.forward_flops + r.backward_flops) / 1e9,
           "{:.3f}"),
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
class Downstream:
    """Downstream scores, one column per unit (``*_downstream.json``): (benchmark, task, metric) rows."""

    units: list[str]
    rows: list[tuple[str, str, str, list[float | None]]]
    skipped: dict[str, str]  # task -> reason (the same for every unit: the data is absent)
    failed: list[tuple[str, str, str]]  # (unit, task, error)
    notes: list[str]
    comparisons: list[Any] = field(default_factory=list)  # significance.Comparison, first unit vs each other

    def comparison_table(self) -> list[list[str]]:
        return [[c.task, c.mode, f"{c.a} - {c.b}", str(c.examples), f"{c.score_a:.4f}", f"{c.score_b:.4f}",
                 f"{c.difference:+.4f}", f"[{c.low:+.4f}, {c.high:+.4f}]", f"{c.p_value:.3f}"]
                for c in self.comparisons]

    COMPARISON_HEADERS = ["task", "mode", "pair", "n", "score a", "score b", "a - b", "95% CI", "p"]

    def table(self) -> list[list[str]]:
        return [[b, t, m, *("" if v is None else f"{v:.4f}" for v in values)] for b, t, m, values in self.rows]

    def headers(self) -> list[str]:
        return ["benchmark", "task", "metric", *self.units]


def read_downstream(directory: Path) -> Downstream | None:
    summaries = {}
    for path in sorted(directory.glob("*_downstream.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"report: {path} is not valid JSON ({exc})") from exc
        if isinstance(data, dict) and "unit" in data:
            summaries[data["unit"]] = data
    if not summaries:
        return None
    keys: dict[tuple[str, str, str], dict[str, float | None]] = {}

    def put(bench: str, task: str, metric: str, unit: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.setdefault((bench, task, metric), {})[unit] = float(value)

    for unit, s in summaries.items():
        for bench in ("glue", "superglue"):
            section = s.get(bench) or {}
            for task, metrics in section.items():
                if isinstance(metrics, dict) and task not in ("task_scores",):
                    label = task if metrics.get("mode") in (None, "fine-tuned") else f"{task} ({metrics['mode']})"
                    for metric, value in metrics.items():
                        if metric not in ("score", "mode"):
                            put(bench, label, metric, unit, value)
            put(bench, "(average)", "score", unit, section.get("average"))
            put(bench, "(evaluated tasks)", "mean score", unit, section.get("average_over_evaluated"))
        squad = s.get("squad") or {}
        for metric in ("em", "f1"):
            put("squad", "squad", metric, unit, squad.get(metric))
        mmlu = s.get("mmlu") or {}
        for mode, section in (mmlu.get("modes") or {}).items():
            put("mmlu", f"overall ({mode})", "accuracy", unit, section.get("accuracy"))
            put("mmlu", f"overall ({mode})", "macro accuracy", unit, section.get("macro_accuracy"))
            for cat, value in (section.get("category_scores") or {}).items():
                put("mmlu", f"{cat} ({mode})", "accuracy", unit, value)
        for task, metrics in (s.get("other") or {}).items():
            for metric, value in metrics.items():
                put("other", task, metric, unit, value)
    units = list(summaries)
    rows = [(b, t, m, [values.get(u) for u in units]) for (b, t, m), values in keys.items()]
    skipped: dict[str, str] = {}
    failed = []
    notes = []
    for unit, s in summaries.items():
        skipped.update(s.get("skipped") or {})
        failed += [(unit, t, e) for t, e in (s.get("failed") or {}).items()]
        if s.get("limit"):
            notes.append(f"{unit}: at most {s['limit']} examples per task split (--limit)")
        if s.get("dev_holdout"):
            notes.append(f"{unit}: tasks without a train split were fine-tuned on half of their eval split")
    if len({s.get("protocol_hash") for s in summaries.values()}) > 1:
        notes.append("warning: downstream results come from different protocols; compare like with like")
    from .significance import RESAMPLES, compare_units

    comparisons = [c for other in units[1:] for c in compare_units(directory, units[0], other)]
    if comparisons:
        notes.append(f"paired bootstrap over the same evaluation examples ({RESAMPLES} resamples): difference of "
                     "the task score (mean of its metrics), 95% percentile interval, two-sided p")
    return Downstream(units, rows, skipped, failed, notes, comparisons)


@dataclass
class Report:
    results: list[CellResult]
    failed: list[dict[str, Any]]
    downstream: Downstream | None = None

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
        if not self.results:
            lines = []
        d = self.downstream
        if d is not None:
            lines += ["", "## Downstream tasks", "", "| " + " | ".join(d.headers()) + " |", "|" + "---|" * len(d.headers())]
            lines += ["| " + " | ".join(row) + " |" for row in d.table()]
            if d.comparisons:
                h = Downstream.COMPARISON_HEADERS
                lines += ["", "Paired comparison:", "", "| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
                lines += ["| " + " | ".join(row) + " |" for row in d.comparison_table()]
            if d.skipped:
                lines += ["", "Skipped tasks (no score):", ""] + [f"- `{t}`: {r}" for t, r in sorted(d.skipped.items())]
            if d.failed:
                lines += ["", "Failed tasks:", ""] + [f"- `{t}` ({u}): {e}" for u, t, e in d.failed]
            lines += [""] + [f"- {n}" for n in d.notes] if d.notes else []
        return "\n".join(lines).strip("\n") + "\n"

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
    downstream = read_downstream(path)
    if not results and not failed and downstream is None:
        raise UsageError(f"report: no result files in {path}; run `mkeval run --output-dir {path}` first")
    results.sort(key=lambda r: (r.dataset, r.seq_len, r.seed, -r.bits, r.precision, r.model_name))
    return Report(results, failed, downstream)


def write_report(report: Report, directory: str | Path) -> tuple[Path, Path]:
    """``report.md`` and ``report.csv`` in ``directory``."""
    md, csv_path = Path(directory) / "report.md", Path(directory) / "report.csv"
    write_text(md, report.markdown())
    write_text(csv_path, report.csv())
    if report.downstream is not None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(report.downstream.headers())
        for b, t, m, values in report.downstream.rows:
            writer.writerow([b, t, m, *("" if v is None else v for v in values)])
        write_text(Path(directory) / "report_downstream.csv", buf.getvalue())
    return md, csv_path
