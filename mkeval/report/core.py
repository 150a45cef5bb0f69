"""The report of a results directory, from its result files alone (no torch import): Markdown and CSV.

``Report`` holds the cells, their summaries over seeds (``lm.py``) and the downstream results
(``downstream.py``); every mark a result carries (``docs/results.md``) is shown beside the number
it concerns, with a legend. ``terminal.py`` prints the same tables, ``html.py`` draws them as a page.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..results import SHARD_SUMMARY_GLOB, SUMMARY_FILE, CellResult, read_json_file, scan_results, write_text
from ..results.aggregate import LMSummary, lm_summaries
from .downstream import (Downstream, comparison_notes, comparison_table, downstream_csv, downstream_table,
                         read_downstream)
from .formatting import _md_table, _plain
from .lm import CELL_CSV, COST, QUALITY, Column, _pruned, memory_header, seeds_csv
from .marks import MARK_COLUMN, MARK_SYMBOLS


@dataclass
class Report:
    directory: Path
    results: list[CellResult]
    failed: list[dict[str, Any]]
    downstream: Downstream | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # file (relative) -> why it was left out
    old_schema: dict[str, str] = field(default_factory=dict)  # result files of another schema version
    summaries: list[LMSummary] = field(default_factory=list)
    unmerged: list[str] = field(default_factory=list)  # units with task results but no summary yet (shards)

    @property
    def protocol_hashes(self) -> list[str]:
        return sorted({r.protocol_hash for r in self.results})

    def lm_tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """(title, headers, rows) of the language-modelling tables."""
        if not self.summaries:
            return []
        cost = [c if c.header != "peak MiB" else Column(memory_header(self.results), c.text) for c in COST]
        return [_pruned("test perplexity over seeds (mean ± sample std; n seeds)", QUALITY, self.summaries),
                _pruned("size and cost (params: non-embedding; active: of those, acting on one token; state: floats "
                        "carried between tokens; weights: in memory)", cost, self.summaries)]

    def mark_legend(self) -> list[str]:
        """One line per mark and distinct detail, naming the models it concerns."""
        out = []
        for k in MARK_SYMBOLS:
            details: dict[str, list[str]] = {}
            for r in self.results:
                if k in (r.marks or {}):
                    models = details.setdefault(r.marks[k], [])
                    if r.model_name not in models:
                        models.append(r.model_name)
            out += [f"{MARK_SYMBOLS[k]} ({MARK_COLUMN[k]}; {', '.join(models)}): {detail}"
                    for detail, models in details.items()]
        return out

    def notes(self) -> list[str]:
        out = self.mark_legend()
        vocab = {(r.dataset, (r.vocabulary or {}).get("tokenizer"), (r.vocabulary or {}).get("fitted_on"),
                  (r.vocabulary or {}).get("test_unk_rate")) for r in self.results if r.vocabulary}
        for dataset, tokenizer, fitted, unk in sorted(vocab, key=str):
            rate = "" if unk is None else f", test <unk> rate {100 * unk:.1f}%"
            out.append(f"{dataset}: tokenizer {tokenizer} fitted on the {fitted or '(fixed vocabulary)'} split{rate}")
        limited = sorted({(r.config or {}).get("limit_windows") for r in self.results} - {None})
        if limited:  # a quick run: its perplexities come from a few windows, not the whole split
            out.append(f"quick run: validation and test perplexities from at most {', '.join(map(str, limited))} "
                       "windows per split (--limit-windows), not the whole split")
        if self.unmerged:
            out.append(f"downstream results of {', '.join(self.unmerged)} are not in this report: their unit summary "
                       "is not written yet (a --shard run); run the same `mkeval run` with --resume and without "
                       "--shard to write it")
        if len(self.protocol_hashes) > 1:
            out.append(f"warning: these results come from {len(self.protocol_hashes)} different protocols "
                       f"({', '.join(self.protocol_hashes)}); compare rows with the same protocol only")
        return out

    def markdown(self) -> str:
        lines: list[str] = []
        for title, headers, rows in self.lm_tables():
            lines += [f"### {title}", "", _md_table(headers, rows), ""]
        lines += [f"- {n}" for n in self.notes()]
        if self.failed:
            lines += ["", "Failed cells:", ""] + [f"- `{f.get('name', '?')}`: {f.get('error')}" for f in self.failed]
        d = self.downstream
        if d is not None:
            lines += ["", "## Downstream tasks", "", _md_table(*downstream_table(d)), ""]
            if d.comparisons:
                lines += ["Paired comparisons (docs/statistics.md):", "", _md_table(*comparison_table(d)), ""]
                lines += [f"- {n}" for n in comparison_notes(d)] + [""]
            if d.skipped:
                lines += ["Skipped tasks (no score):", ""] + [f"- `{t}`: {r}" for t, r in sorted(d.skipped.items())]
            if d.failed:
                lines += ["", "Failed tasks:", ""] + [f"- `{t}` ({u}): {e}" for u, t, e in d.failed]
            lines += [""] + [f"- {n}" for n in d.notes]
        if self.unreadable:
            lines += ["", "Warning: these files could not be read and are not in this report:", ""]
            lines += [f"- `{f}`: {why}" for f, why in self.unreadable.items()]
        return "\n".join(lines).strip("\n") + "\n"

    def csv(self) -> str:
        """One row per cell, every number as recorded (the tables above are its summary)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CELL_CSV + ["marks"])
        for r in self.results:
            writer.writerow([_plain(getattr(r, k)) for k in CELL_CSV] + ["; ".join(sorted(r.marks or {}))])
        return buf.getvalue()


def build_report(directory: str | Path, baseline: str | None = None) -> Report:
    """Read every cell result (and the run summary's failures) in ``directory``."""
    path = Path(directory)
    if not path.is_dir():
        raise UsageError(f"report: {path} is not a directory")
    scan = scan_results(path)
    results = [CellResult.from_json(data) for _, data in sorted(scan.finished.values(), key=lambda item: item[0])]
    unreadable = {str(p.relative_to(path)): why for p, why in scan.unreadable.items()}
    for p in sorted(path.glob("downstream/**/*.json")):
        why = read_json_file(p)[1]
        if why is not None:
            unreadable[str(p.relative_to(path))] = why
    failed = failed_cells(path, unreadable, {r.cell_hash for r in results})
    downstream = read_downstream(path, baseline)
    unmerged = sorted(d.name for d in path.glob("downstream/*/") if d.is_dir() and any(d.glob("*.json"))
                      and not (path / f"{d.name}_downstream.json").exists())
    if not results and not failed and downstream is None and not unreadable and not unmerged:
        raise UsageError(f"report: no result files in {path}; run `mkeval run --output-dir {path}` first")
    if baseline is not None and downstream is None and baseline not in {r.model_name for r in results}:
        raise UsageError(f"--baseline: no model {baseline!r} in {path}")
    order = {m: i for i, m in enumerate(dict.fromkeys([baseline] if baseline else []))}
    results.sort(key=lambda r: (r.dataset, r.seq_len, order.get(r.model_name, 1), r.model_name,
                                r.trained_precision or r.precision, -r.bits, r.precision, r.seed))
    summaries = lm_summaries(results)
    old = {str(p.relative_to(path)): why for p, why in scan.old_schema.items()}
    return Report(path, results, failed, downstream, unreadable, old, summaries, unmerged)


def failed_cells(path: Path, unreadable: dict[str, str], finished: set[str]) -> list[dict[str, Any]]:
    """Failed cells of the run summary and of every shard's (``--shard``), each once, leaving out
    a cell whose result a later run (another shard, a final ``--resume``) did write."""
    failed: dict[str, dict[str, Any]] = {}
    for summary in [path / SUMMARY_FILE, *sorted(path.glob(SHARD_SUMMARY_GLOB))]:
        name = summary.name
        if not summary.exists() or name in unreadable:
            continue
        data, why = read_json_file(summary)
        try:
            if why is not None:
                raise ValueError(why)
            for c in data["cells"]:
                if isinstance(c, dict) and c.get("status") == "failed" and c.get("cell_hash") not in finished:
                    failed.setdefault(c["name"], c)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            unreadable[name] = f"not a run summary ({type(exc).__name__}: {exc})"
    return list(failed.values())


def write_report(report: Report, directory: str | Path) -> list[Path]:
    """``report.md``, ``report.csv`` (cells), ``report_seeds.csv`` (over seeds) and, with downstream
    results, ``report_downstream.csv``."""
    md, csv_path = Path(directory) / "report.md", Path(directory) / "report.csv"
    write_text(md, report.markdown())
    write_text(csv_path, report.csv())
    written = [md, csv_path]
    if report.summaries:
        path = Path(directory) / "report_seeds.csv"
        write_text(path, seeds_csv(report.summaries))
        written.append(path)
    if report.downstream is not None:
        path = Path(directory) / "report_downstream.csv"
        write_text(path, downstream_csv(report.downstream))
        written.append(path)
    return written
