"""Comparison tables from result files alone (no torch import): the terminal, Markdown and CSV.

Language-modelling cells are summarised over seeds (mean ± sample std, n; ``mkeval.aggregate``),
one row per model, dataset, length, training precision and evaluation precision; downstream
results list every mode (fine-tuned, k-shot) of every task, over seeds per model. Every mark a
result carries (``docs/results.md``) is shown beside the number it concerns, with a legend, and
nothing degenerate is shown as a number. ``mkeval.html_report`` draws the same as a page.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..results.aggregate import LMSummary, SeedStats, group_by, lm_summaries, seed_stats
from ..errors import UsageError
from ..results import SUMMARY_FILE, CellResult, read_json_file, scan_results, write_text

# where each mark is shown, and its symbol
MARK_SYMBOLS = {"test_contamination": "‡", "valid_is_train_text": "†", "size_not_matched": "≠",
                "flops_incomplete": "*"}
MARK_COLUMN = {"test_contamination": "test ppl", "valid_is_train_text": "val ppl", "size_not_matched": "params",
               "flops_incomplete": "GFLOP/step"}
TIE_SYMBOL, TRUNCATED_SYMBOL, FEWER_SHOTS_SYMBOL = "◊", "✂", "↓"
TRUNCATED_SHARE = 0.05  # prompts cut inside the question beyond this share mark a score


# --------------------------------------------------------------------------- formatting
def _num(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def _stats(s: SeedStats, digits: int = 3, pct: bool = False) -> str:
    """``mean ± std`` (``±`` only with two seeds or more)."""
    if s.mean is None:
        return ""
    if pct:
        return _pct(s.mean) + (f" ± {100 * s.std:.1f}" if s.std is not None else "")
    return f"{s.mean:.{digits}f}" + (f" ± {s.std:.{digits}f}" if s.std is not None else "")


def _marks(cells: list[CellResult], column: str) -> str:
    found = {k for r in cells for k in (r.marks or {})}
    return "".join(MARK_SYMBOLS[k] for k in MARK_SYMBOLS if k in found and MARK_COLUMN[k] == column)


# --------------------------------------------------------------------------- language modelling
@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[LMSummary], str]  # the table cell
    value: Callable[[LMSummary], Any] | None = None  # the CSV value (None: the text)


def _first(s: LMSummary) -> CellResult:
    return s.cells[0]


def _trained(s: LMSummary) -> bool:
    return _first(s).precision_role == "trained"


def _mean(s: LMSummary, name: str) -> float | None:
    values = [getattr(r, name) for r in s.cells if getattr(r, name) is not None]
    return sum(values) / len(values) if values else None


def _count(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else ""


def _params(s: LMSummary) -> str:
    return _count(_first(s).non_embedding_params) + _marks(s.cells, "params")


def _active(s: LMSummary) -> str:
    r = _first(s)
    return "" if r.active_params_per_token in (None, r.non_embedding_params) else _count(r.active_params_per_token)


def _gflops(s: LMSummary) -> str:
    r = _first(s)
    if not _trained(s) or r.forward_flops is None or r.backward_flops is None:
        return ""
    return _num((r.forward_flops + r.backward_flops) / 1e9, 3) + _marks(s.cells, "GFLOP/step")


def _state(s: LMSummary) -> str:
    state = _first(s).state_size
    if not state:
        return ""
    fixed, per_token = state.get("fixed", 0), state.get("per_token", 0)
    return " + ".join(p for p in (f"{fixed:,}" if fixed else "", f"{per_token:,}/tok" if per_token else "") if p) or "0"


def memory_header(results: list[CellResult]) -> str:
    """Peak process RSS on a CPU and peak CUDA allocation on a GPU are different things: say which."""
    methods = {(r.config.get("measurement") or {}).get("memory_method") for r in results}
    if methods == {"cuda_max_allocated"}:
        return "peak CUDA MiB"
    if methods == {"cpu_peak_rss_sampled"}:
        return "peak RSS MiB"
    return "peak MiB"


QUALITY = [
    Column("model", lambda s: s.model_name),
    Column("dataset", lambda s: s.dataset),
    Column("seq", lambda s: str(s.seq_len)),
    Column("trained at", lambda s: s.trained_at),
    Column("eval at", lambda s: s.evaluated_at if s.evaluated_at != s.trained_at else "="),
    Column("n", lambda s: str(len(s.cells))),
    Column("test ppl", lambda s: _stats(s.numbers["test_perplexity"]) + _marks(s.cells, "test ppl")),
    Column("val ppl", lambda s: _stats(s.numbers["best_perplexity"]) + _marks(s.cells, "val ppl")),
    Column("word ppl", lambda s: _stats(s.numbers["test_word_perplexity"], 2)),
    Column("bpb", lambda s: _stats(s.numbers["test_bits_per_byte"], 4)),
    Column("gap", lambda s: _stats(s.numbers["perplexity_gap"], pct=True)),
    Column("Δppl", lambda s: _stats(s.numbers["relative_perplexity_delta"], pct=True)),
]
"""Quality over seeds; Δppl is relative to the same checkpoint at the precision it was trained at."""

COST = [
    Column("model", lambda s: s.model_name),
    Column("dataset", lambda s: s.dataset),
    Column("seq", lambda s: str(s.seq_len)),
    Column("trained at", lambda s: s.trained_at),
    Column("eval at", lambda s: s.evaluated_at if s.evaluated_at != s.trained_at else "="),
    Column("params", _params),
    Column("active", _active),
    Column("state", _state),
    Column("weights MiB", lambda s: _num(_first(s).model_size_mb, 2)),
    Column("peak MiB", lambda s: _num(_mean(s, "peak_memory_mb"), 0)),
    # an evaluation-only row did not train: its training numbers are its training cell's
    Column("tok/s", lambda s: _count(_mean(s, "tokens_per_second")) if _trained(s) else ""),
    Column("train s", lambda s: _num(_mean(s, "training_time"), 1) if _trained(s) else ""),
    Column("GFLOP/step", _gflops),
]
"""Size and cost; params are non-embedding (active: acting on one token); state: floats carried between tokens."""

CELL_CSV = ["model_name", "dataset", "seq_len", "trained_precision", "precision", "precision_role", "seed",
            "test_perplexity", "best_perplexity", "final_perplexity", "test_word_perplexity", "test_bits_per_byte",
            "test_accuracy", "optimal_perplexity", "perplexity_gap", "relative_perplexity_delta", "total_params",
            "non_embedding_params", "active_params_per_token", "model_size_mb", "peak_memory_mb",
            "tokens_per_second", "training_time", "forward_flops", "backward_flops", "steps", "train_tokens"]


# --------------------------------------------------------------------------- downstream
SEED_SUFFIX = re.compile(r"_seed\d+$")


def unit_group(unit: str) -> str:
    """The units of one model at one precision (and pretraining) differ only in their seed suffix."""
    return SEED_SUFFIX.sub("", unit)


@dataclass
class ModeScores:
    """One task mode of one model group over its seeds."""

    metrics: dict[str, SeedStats]
    status: str  # ok | degenerate | skipped | failed | absent
    reason: str | None = None
    ties: int = 0
    examples: int = 0
    shots_asked: int | None = None
    shots_mean: float | None = None
    truncated_share: float = 0.0

    @property
    def marks(self) -> str:
        out = TIE_SYMBOL if self.ties else ""
        if self.truncated_share > TRUNCATED_SHARE:
            out += TRUNCATED_SYMBOL
        if self.shots_asked and self.shots_mean is not None and self.shots_mean < self.shots_asked:
            out += FEWER_SHOTS_SYMBOL
        return out


@dataclass
class Downstream:
    """Every mode of every task, per model group (a model's units over seeds), plus benchmark aggregates."""

    groups: dict[str, list[dict[str, Any]]]  # group -> its units' summaries, by seed
    rows: list[tuple[str, str, str, str, dict[str, ModeScores]]]  # (benchmark, task, mode, metric, group -> scores)
    aggregates: list[tuple[str, str, str, dict[str, SeedStats]]]  # (benchmark, row, metric, group -> stats)
    skipped: dict[str, str]
    failed: list[tuple[str, str, str]]  # (unit, task, error)
    notes: list[str]
    comparisons: list[Any] = field(default_factory=list)

    COLLAPSE = 12  # a benchmark with more tasks shows only its aggregates in the terminal and Markdown

    def n_text(self, group: str) -> str:
        return f"{group} (n={len(self.groups[group])})"

    def visible_rows(self) -> list[tuple[str, str, str, str, dict[str, ModeScores]]]:
        sizes = {b: len({t for bb, t, *_ in self.rows if bb == b}) for b, *_ in self.rows}
        aggregated = {b for b, *_ in self.aggregates}
        return [row for row in self.rows if not (sizes[row[0]] > self.COLLAPSE and row[0] in aggregated)]

    @staticmethod
    def cell(scores: ModeScores | None, metric: str) -> str:
        if scores is None or scores.status == "absent":
            return ""
        if scores.status != "ok":
            return scores.status
        stats = scores.metrics.get(metric)
        return "" if stats is None else _stats(stats, 4) + scores.marks


def _mode_scores(units: list[dict[str, Any]], mode_results: list[dict[str, Any] | None]) -> ModeScores:
    present = [m for m in mode_results if m]
    if not present:
        return ModeScores({}, "absent")
    oks = [m for m in present if m.get("status") == "ok"]
    if len(oks) < len(present):  # one seed degenerate or skipped: the group has no number
        bad = next(m for m in present if m.get("status") != "ok")
        return ModeScores({}, bad.get("status", "failed"), bad.get("reason") or bad.get("error"))
    names = list(dict.fromkeys(k for m in oks for k in m.get("metrics", {})))
    seeds = [u.get("seed") for u, m in zip(units, mode_results) if m]
    metrics = {k: seed_stats([m["metrics"].get(k) for m in oks], seeds) for k in names}
    shots = [m.get("effective_shots", {}).get("mean") for m in oks if isinstance(m.get("effective_shots"), dict)]
    return ModeScores(metrics, "ok", ties=sum(m.get("ties", 0) or 0 for m in oks),
                      examples=sum(m.get("examples", 0) if isinstance(m.get("examples"), int)
                                   else m.get("examples", {}).get("eval", 0) for m in oks),
                      shots_asked=oks[0].get("shots"), shots_mean=sum(shots) / len(shots) if shots else None,
                      truncated_share=max((m.get("truncated_share", 0.0) or 0.0) for m in oks))


def read_downstream(directory: Path, baseline: str | None = None) -> Downstream | None:
    summaries = []
    for path in sorted(directory.glob("*_downstream.json")):
        data, why = read_json_file(path)
        if why is None and isinstance(data, dict) and "unit" in data:
            summaries.append(data)
    if not summaries:
        return None
    groups = {g: sorted(us, key=lambda u: u.get("seed") or 0)
              for (g,), us in group_by(summaries, lambda s: (unit_group(s["unit"]),)).items()}
    if baseline is not None:
        if baseline not in groups:
            raise UsageError(f"--baseline: no model {baseline!r} in {directory} (models: {', '.join(groups)})")
        groups = {baseline: groups[baseline], **{g: u for g, u in groups.items() if g != baseline}}
    # (benchmark, task) -> group -> [(unit summary, task result)]
    tasks: dict[tuple[str, str], dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]] = {}
    for group, units in groups.items():
        for unit in units:
            for task, rel in (unit.get("task_results") or {}).items():
                result, why = read_json_file(directory / rel)
                if why is not None or not isinstance(result, dict):
                    continue
                bench = (result.get("groups") or ["other"])[0]
                tasks.setdefault((bench, task), {}).setdefault(group, []).append((unit, result))
    rows = []
    for (bench, task), per_group in sorted(tasks.items()):
        modes: dict[str, None] = {}
        for results in per_group.values():
            for _, r in results:
                if r.get("finetune"):
                    modes["fine-tuned"] = None
                for k in r.get("prompt") or {}:
                    modes[k] = None
        for mode in sorted(modes, key=lambda m: (m != "fine-tuned", int(m.split("-")[0]) if m[0].isdigit() else 0)):
            scores = {}
            for group, results in per_group.items():
                picked = [(r.get("finetune") if mode == "fine-tuned" else (r.get("prompt") or {}).get(mode))
                          for _, r in results]
                scores[group] = _mode_scores([u for u, _ in results], picked)
            metrics = list(dict.fromkeys(k for s in scores.values() for k in s.metrics)) or ["score"]
            for metric in metrics:
                rows.append((bench, task, mode, metric, scores))
    aggregates = _aggregates(groups)
    skipped: dict[str, str] = {}
    failed, notes = [], []
    for group, units in groups.items():
        for s in units:
            skipped.update(s.get("skipped") or {})
            failed += [(s["unit"], t, e) for t, e in (s.get("failed") or {}).items()]
        first = units[0]
        if first.get("limit"):
            notes.append(f"{group}: at most {first['limit']} examples per task split (--limit)")
        if first.get("dev_holdout"):
            notes.append(f"{group}: tasks without a train split were fine-tuned on half of their eval split")
    if len({s.get("protocol_hash") for s in summaries}) > 1:
        notes.append("warning: downstream results come from different protocols; compare like with like")
    legend = {TIE_SYMBOL: "some prompts tied (the first option won)",
              TRUNCATED_SYMBOL: f"over {100 * TRUNCATED_SHARE:.0f}% of prompts cut inside the question",
              FEWER_SHOTS_SYMBOL: "fewer shots fit than asked (see the task's effective_shots)"}
    shown = "".join(s.marks for *_, scores in rows for s in scores.values())
    notes += [f"{symbol} {text}" for symbol, text in legend.items() if symbol in shown]
    if any(s.status == "degenerate" for *_, scores in rows for s in scores.values()):
        notes.append("degenerate: the tokenizer cannot tell some example's options apart, so there is no score "
                     "(docs/tasks.md)")
    return Downstream(groups, rows, aggregates, skipped, failed, notes, _comparisons(directory, groups))


def _aggregates(groups: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str, dict[str, SeedStats]]]:
    """Benchmark averages from the unit summaries (GLUE/SuperGLUE averages, MMLU by mode and category)."""
    found: dict[tuple[str, str, str], dict[str, list[tuple[int, float | None]]]] = {}

    def put(bench: str, row: str, metric: str, group: str, seed: int, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.setdefault((bench, row, metric), {}).setdefault(group, []).append((seed, float(value)))

    for group, units in groups.items():
        for s in units:
            seed = s.get("seed") or 0
            for bench in ("glue", "superglue"):
                section = s.get(bench) or {}
                put(bench, "(average)", "score", group, seed, section.get("average"))
                put(bench, "(evaluated tasks)", "mean score", group, seed, section.get("average_over_evaluated"))
            for mode, section in ((s.get("mmlu") or {}).get("modes") or {}).items():
                put("mmlu", f"all subjects ({mode})", "accuracy", group, seed, section.get("accuracy"))
                put("mmlu", f"all subjects ({mode})", "macro accuracy", group, seed, section.get("macro_accuracy"))
                for category, value in (section.get("category_scores") or {}).items():
                    put("mmlu", f"{category} ({mode})", "accuracy", group, seed, value)
    return [(b, r, m, {g: seed_stats([v for _, v in vals], [s for s, _ in vals]) for g, vals in per_group.items()})
            for (b, r, m), per_group in found.items()]


POOLED_GROUPS = ("mmlu",)  # benchmarks compared over all their tasks' questions at once (micro accuracy)


def _comparisons(directory: Path, groups: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """The first (baseline) model against each other one: seed-level with 3+ seeds each, else example-level."""
    if len(groups) < 2:
        return []
    from ..significance import compare_models

    names = list(groups)
    base = [u["unit"] for u in groups[names[0]]]
    return [c for other in names[1:] for c in compare_models(directory, base, [u["unit"] for u in groups[other]],
                                                              pool=POOLED_GROUPS, labels=(names[0], other))]


# --------------------------------------------------------------------------- the report
@dataclass
class Report:
    directory: Path
    results: list[CellResult]
    failed: list[dict[str, Any]]
    downstream: Downstream | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # file (relative) -> why it was left out
    old_schema: dict[str, str] = field(default_factory=dict)  # result files of another schema version
    summaries: list[LMSummary] = field(default_factory=list)

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


def _pruned(title: str, columns: list[Column], rows: list[LMSummary]) -> tuple[str, list[str], list[list[str]]]:
    """The table without the columns that are empty on every row (e.g. word ppl on synthetic data)."""
    cells = [[c.text(s) for c in columns] for s in rows]
    keep = [i for i, c in enumerate(columns) if i < 4 or any(row[i] not in ("", "=") for row in cells)]
    return title, [columns[i].header for i in keep], [[row[i] for i in keep] for row in cells]


def _plain(value: Any) -> Any:
    return "" if value is None else value


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def downstream_table(d: Downstream) -> tuple[list[str], list[list[str]]]:
    groups = list(d.groups)
    headers = ["benchmark", "task", "mode", "metric", *(d.n_text(g) for g in groups)]
    rows = [[b, t, m, k, *(Downstream.cell(scores.get(g), k) for g in groups)] for b, t, m, k, scores in
            d.visible_rows()]
    rows += [[b, row, "", k, *(_stats(stats[g], 4) if g in stats else "" for g in groups)]
             for b, row, k, stats in d.aggregates]
    return headers, rows


COMPARISON_HEADERS = ["task", "mode", "pair", "n", "seeds", "score a", "score b", "a - b", "95% CI", "p", "test"]


def comparison_table(d: Downstream) -> tuple[list[str], list[list[str]]]:
    """One row per comparison; one that is not meaningful shows no p-value but a note number
    (``comparison_notes``). ``test`` numbers the method, also spelled out in the notes."""
    methods = list(dict.fromkeys(c.method for c in d.comparisons))
    rows, note = [], 0
    for c in d.comparisons:
        p = f"{c.p_value:.3f}" if c.meaningful and c.p_value is not None else "—"
        if not c.meaningful:
            note += 1
            p += f" [{note}]"
        task = f"{c.task} ({len(c.pooled)} pooled)" if c.pooled else c.task
        rows.append([task, c.mode, f"{c.a} - {c.b}", str(c.examples), f"{c.seeds[0]}/{c.seeds[1]}",
                     f"{c.score_a:.3f}", f"{c.score_b:.3f}", f"{c.difference:+.3f}",
                     f"[{c.low:+.3f}, {c.high:+.3f}]" if c.low is not None else "", p,
                     f"({methods.index(c.method) + 1})"])
    return COMPARISON_HEADERS, rows


def comparison_notes(d: Downstream) -> list[str]:
    """The tests used, numbered as in the ``test`` column, then why each unmarked p-value is missing."""
    methods = list(dict.fromkeys(c.method for c in d.comparisons))
    out = [f"test ({i}): {m}" for i, m in enumerate(methods, 1)]
    flagged = [c for c in d.comparisons if not c.meaningful]
    out += [f"[{i}] {c.task} {c.mode}: not meaningful: {c.note}" for i, c in enumerate(flagged, 1)]
    return out


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
    failed: list[dict[str, Any]] = []
    summary = path / SUMMARY_FILE
    if summary.exists() and SUMMARY_FILE not in unreadable:
        try:
            failed = [c for c in json.loads(summary.read_text())["cells"]
                      if isinstance(c, dict) and c.get("status") == "failed"]
        except (KeyError, TypeError, AttributeError) as exc:
            unreadable[SUMMARY_FILE] = f"not a run summary ({type(exc).__name__}: {exc})"
    downstream = read_downstream(path, baseline)
    if not results and not failed and downstream is None and not unreadable:
        raise UsageError(f"report: no result files in {path}; run `mkeval run --output-dir {path}` first")
    if baseline is not None and downstream is None and baseline not in {r.model_name for r in results}:
        raise UsageError(f"--baseline: no model {baseline!r} in {path}")
    order = {m: i for i, m in enumerate(dict.fromkeys([baseline] if baseline else []))}
    results.sort(key=lambda r: (r.dataset, r.seq_len, order.get(r.model_name, 1), r.model_name,
                                r.trained_precision or r.precision, -r.bits, r.precision, r.seed))
    summaries = lm_summaries(results)
    old = {str(p.relative_to(path)): why for p, why in scan.old_schema.items()}
    return Report(path, results, failed, downstream, unreadable, old, summaries)


def seeds_csv(summaries: list[LMSummary]) -> str:
    """Language-modelling numbers over seeds, long format: mean, sample std, n and the 95% t-interval."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "dataset", "seq_len", "trained_at", "evaluated_at", "number", "mean", "std", "n",
                     "ci95_low", "ci95_high", "seeds"])
    for s in summaries:
        for name, st in s.numbers.items():
            if st.n:
                writer.writerow([s.model_name, s.dataset, s.seq_len, s.trained_at, s.evaluated_at, name, st.mean,
                                 _plain(st.std), st.n, _plain(st.low), _plain(st.high), " ".join(map(str, st.seeds))])
    return buf.getvalue()


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


def downstream_csv(d: Downstream) -> str:
    """Every (benchmark, task, mode, metric, model) with its seed statistics and marks, long format."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["benchmark", "task", "mode", "metric", "model", "status", "mean", "std", "n", "ci95_low",
                     "ci95_high", "ties", "mean_shots", "truncated_share", "reason"])
    for b, t, m, k, scores in d.rows:
        for group, s in scores.items():
            if s.status == "absent":
                continue
            st = s.metrics.get(k)
            writer.writerow([b, t, m, k, group, s.status, *(("", "", "", "", "") if st is None else
                                                           (st.mean, _plain(st.std), st.n, _plain(st.low),
                                                            _plain(st.high))),
                             s.ties, _plain(s.shots_mean), s.truncated_share, s.reason or ""])
    for b, row, k, stats in d.aggregates:
        for group, st in stats.items():
            writer.writerow([b, row, "", k, group, "ok", st.mean, _plain(st.std), st.n, _plain(st.low),
                             _plain(st.high), "", "", "", ""])
    return buf.getvalue()


# --------------------------------------------------------------------------- the terminal
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
