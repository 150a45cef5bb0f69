"""Downstream results over seeds: every mode of every task per model, benchmark aggregates and
the paired comparisons (``mkeval.significance``), as tables and CSV.

A model group is one model's units over seeds (``unit_group``); nothing degenerate, skipped or
failed is shown as a number.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..results import read_json_file
from ..results.aggregate import SeedStats, group_by, seed_stats
from ..results.downstream import UnitSummary
from .formatting import _plain, _stats
from .marks import FEWER_SHOTS_SYMBOL, TIE_SYMBOL, TRUNCATED_SHARE, TRUNCATED_SYMBOL


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
    aggregates: list[AggregateRow]
    skipped: dict[str, str]
    failed: list[tuple[str, str, str]]  # (unit, task, error)
    notes: list[str]
    comparisons: list[Any] = field(default_factory=list)

    COLLAPSE = 12  # a benchmark with more tasks shows only its aggregates in the terminal and Markdown

    def n_text(self, group: str) -> str:
        return f"{group} (n={len(self.groups[group])})"

    def visible_rows(self) -> list[tuple[str, str, str, str, dict[str, ModeScores]]]:
        sizes = {b: len({t for bb, t, *_ in self.rows if bb == b}) for b, *_ in self.rows}
        aggregated = {a.benchmark for a in self.aggregates}
        return [row for row in self.rows if not (sizes[row[0]] > self.COLLAPSE and row[0] in aggregated)]

    @staticmethod
    def cell(scores: ModeScores | None, metric: str, seeds: int) -> str:
        """A group's score; ``seeds``: how many units the group has (its header's n)."""
        if scores is None or scores.status == "absent":
            return ""
        if scores.status != "ok":
            return scores.status
        stats = scores.metrics.get(metric)
        return "" if stats is None else _score(stats, seeds) + scores.marks


def _score(stats: SeedStats, seeds: int) -> str:
    """mean ± std, and ``(n=k)`` when fewer seeds than the header's n are behind it (the others have no
    result: failed, or a number that was not finite)."""
    return _stats(stats, 4) + (f" (n={stats.n})" if stats.n < seeds else "")


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
    aggregates, pools = _aggregates(groups)
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
        if first.get("init") == "scratch" and any(r.get("prompt") for per in tasks.values()
                                                  for _, r in per.get(group, [])):
            notes.append(f"{group}: not pretrained (no --datasets): its zero- and few-shot scores are those of a "
                         "randomly initialised model (they reflect its biases and the labels' balance, not learning)")
    reasons: dict[tuple[str, str, str], None] = {}  # a mode skipped inside a task that ran: why, once
    for (_, task), per_group in sorted(tasks.items()):
        for results in per_group.values():
            for _, r in results:
                modes = [("fine-tuned", r.get("finetune"))] + list((r.get("prompt") or {}).items())
                for mode, m in modes:
                    if isinstance(m, dict) and m.get("status") == "skipped" and m.get("reason"):
                        reasons[(task, mode, m["reason"])] = None
    notes += [f"{task} {mode}: skipped, {reason}" for task, mode, reason in reasons]
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
    return Downstream(groups, rows, aggregates, skipped, failed, notes, _comparisons(directory, groups, pools))


@dataclass(frozen=True)
class AggregateRow:
    """A benchmark group's summary row (from its aggregator's ``report_rows``) over each model's seeds."""

    benchmark: str
    row: str
    mode: str
    metric: str
    chart: str | None
    stats: dict[str, SeedStats]  # model group -> over its seeds

    @property
    def label(self) -> str:
        return f"{self.row} ({self.mode})" if self.mode else self.row


def _aggregates(groups: dict[str, list[dict[str, Any]]]) -> tuple[list[AggregateRow], list[str]]:
    """Every benchmark group's ``report_rows`` over seeds, and the groups whose tasks comparisons pool."""
    found: dict[tuple[str, str, str, str, str | None], dict[str, list[tuple[int, float]]]] = {}
    pools: list[str] = []
    for group, units in groups.items():
        for s in units:
            summary = UnitSummary.from_json(s)
            for bench, section in summary.benchmarks.items():
                if section.get("pool") and bench not in pools:
                    pools.append(bench)
                for r in section.get("report_rows") or []:
                    value = r.get("value")
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        key = (bench, r["row"], r.get("mode", ""), r["metric"], r.get("chart"))
                        found.setdefault(key, {}).setdefault(group, []).append((summary.seed or 0, float(value)))
    rows = [AggregateRow(*key, {g: seed_stats([v for _, v in vals], [s for s, _ in vals]) for g, vals in per.items()})
            for key, per in found.items()]
    return rows, pools


def _comparisons(directory: Path, groups: dict[str, list[dict[str, Any]]], pools: list[str]) -> list[Any]:
    """The first (baseline) model against each other one: seed-level with 3+ seeds each, else example-level.
    Tasks of a pooled group (its aggregator says so, e.g. MMLU's subjects) are compared as one."""
    if len(groups) < 2:
        return []
    from ..significance import compare_models

    names = list(groups)
    base = [u["unit"] for u in groups[names[0]]]
    return [c for other in names[1:] for c in compare_models(directory, base, [u["unit"] for u in groups[other]],
                                                              pool=pools, labels=(names[0], other))]


# --------------------------------------------------------------------------- the report


def downstream_table(d: Downstream) -> tuple[list[str], list[list[str]]]:
    groups = list(d.groups)
    headers = ["benchmark", "task", "mode", "metric", *(d.n_text(g) for g in groups)]
    seeds = {g: len(d.groups[g]) for g in groups}
    rows = [[b, t, m, k, *(Downstream.cell(scores.get(g), k, seeds[g]) for g in groups)] for b, t, m, k, scores in
            d.visible_rows()]
    rows += [[a.benchmark, a.row, a.mode, a.metric, *(_score(a.stats[g], seeds[g]) if g in a.stats else ""
                                                      for g in groups)] for a in d.aggregates]
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
    for a in d.aggregates:
        for group, st in a.stats.items():
            writer.writerow([a.benchmark, a.row, a.mode, a.metric, group, "ok", st.mean, _plain(st.std), st.n,
                             _plain(st.low), _plain(st.high), "", "", "", ""])
    return buf.getvalue()
