"""Downstream figures: a benchmark's tasks, modes and metrics as bars per model, and the charts a
benchmark group's aggregator names (e.g. MMLU's categories)."""

from __future__ import annotations

import re
from typing import Any

from ...results.aggregate import SeedStats, group_by
from ..core import Report
from ..marks import FEWER_SHOTS_SYMBOL, TIE_SYMBOL, TRUNCATED_SHARE, TRUNCATED_SYMBOL
from .figure import T_INTERVAL, Palette, Plot, _figure, _legend, _offsets, _single, _unmatched_models


def _stats_bar(ax: Any, y: float, stats: SeedStats, colour: Any, height: float, marks: str) -> None:
    """A horizontal bar at the mean with the seed t-interval (n ≥ 2), each seed as a dot, marks beyond it."""
    if stats.mean is None:
        ax.text(0, y, "  no finite value", va="center", fontsize=8, color="0.35", style="italic")
        return
    interval = stats.low is not None and stats.high is not None
    ax.barh([y], [stats.mean], height=height, color=colour, alpha=0.85,
            xerr=[[stats.mean - stats.low], [stats.high - stats.mean]] if interval else None,
            error_kw={"capsize": 2, "elinewidth": 1})
    if len(stats.values) > 1:
        ax.plot(list(stats.values), [y] * len(stats.values), marker=".", linestyle="none", color="black",
                markersize=3, alpha=0.6)
    if marks:
        end = max(stats.mean, stats.high if interval else stats.mean, *stats.values)
        ax.annotate(marks, (end, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=10,
                    fontweight="bold")


def _status_text(ax: Any, y: float, status: str, colour: Any) -> None:
    ax.text(0, y, f" {status}", va="center", ha="left", fontsize=8, color=colour, style="italic",
            fontweight="bold")


def draw_downstream(report: Report, palette: Palette) -> list[Plot]:
    """Per benchmark: every task, mode and metric as bars per model group, with the seed t-interval."""
    d = report.downstream
    if d is None or not d.rows:
        return []
    groups = list(d.groups)
    unmatched = _unmatched_models(report)
    plots = []
    rows_by_bench = group_by(d.visible_rows(), lambda row: (row[0],))
    for (bench,), rows in rows_by_bench.items():
        items: list[tuple[str, str, dict[str, Any]]] = []  # (label, metric, group -> ModeScores or SeedStats)
        for _, task, mode, metric, scores in rows:
            items.append((f"{task} · {mode} · {metric}", metric, scores))
        for a in d.aggregates:
            if a.benchmark == bench and a.chart is None:  # rows of a chart have their own figure
                items.append((f"{a.label} · {a.metric}", a.metric, a.stats))
        height = 0.8 / max(1, len(groups))
        plotted: list[SeedStats] = []
        fig, [ax] = _figure(1, size=(7.0, 0.32 * len(items) * max(1.0, len(groups) * 0.6) + 0.9))
        for i, (_, metric, per_group) in enumerate(items):
            for j, group in enumerate(groups):
                y = i + _offsets(len(groups), 0.8)[j]
                value = per_group.get(group)
                if value is None:
                    continue
                if isinstance(value, SeedStats):
                    _stats_bar(ax, y, value, palette(group), height, "")
                    plotted.append(value)
                elif value.status == "ok":
                    stats = value.metrics.get(metric)
                    if stats is not None:
                        _stats_bar(ax, y, stats, palette(group), height, value.marks)
                        plotted.append(stats)
                elif value.status != "absent":
                    _status_text(ax, y, value.status, palette(group))
        ax.set_yticks(range(len(items)), [label for label, _, _ in items], fontsize=8)
        ax.set_ylim(len(items) - 0.5, -0.5)
        ax.axvline(0, color="0.3", linewidth=0.8)
        ax.set_xlabel("score (metric as named; fractions)")
        ax.set_title(f"{bench}", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        _legend(fig, palette, groups, unmatched, marker="s", single=_single(plotted))
        caption = (f"Each {bench} task, mode and metric (and the benchmark's averages), a bar per model: the mean "
                   f"over seeds (dots: each seed); error {T_INTERVAL}. A mode with no score is drawn as its status "
                   "('degenerate': the tokenizer cannot tell the options apart; 'skipped'; 'failed') instead of a "
                   f"bar. Beside a bar: {TIE_SYMBOL} some prompts tied, {TRUNCATED_SYMBOL} over "
                   f"{100 * TRUNCATED_SHARE:.0f}% of prompts cut inside the question, {FEWER_SHOTS_SYMBOL} fewer "
                   "shots fit than asked.")
        plots.append(Plot(f"downstream_{_slug(bench)}", f"Downstream: {bench}", caption, fig))
    return plots


def draw_charts(report: Report, palette: Palette) -> list[Plot]:
    """A benchmark group's chart (its aggregator's rows that name one, e.g. MMLU's categories): a panel per
    mode (0-shot, 5-shot, fine-tuned ...), a bar per row and model group."""
    d = report.downstream
    if d is None:
        return []
    charts: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (benchmark, chart) -> mode -> row -> stats
    metrics: dict[tuple[str, str], str] = {}
    for a in d.aggregates:
        if a.chart is not None:
            charts.setdefault((a.benchmark, a.chart), {}).setdefault(a.mode, {})[a.row] = a.stats
            metrics[(a.benchmark, a.chart)] = a.metric
    groups = list(d.groups)
    plots = []
    for (bench, chart), modes in charts.items():
        fig, axes = _figure(len(modes), columns=2, size=(5.6, 3.4))
        for ax, (mode, rows) in zip(axes, modes.items()):
            names = list(rows)
            offsets = _offsets(len(groups))
            for i, row in enumerate(names):
                for j, group in enumerate(groups):
                    stats = rows[row].get(group)
                    if stats is None or stats.mean is None:
                        continue
                    x = i + offsets[j]
                    interval = stats.low is not None and stats.high is not None
                    ax.bar([x], [stats.mean], width=0.7 / len(groups), color=palette(group), alpha=0.85,
                           yerr=[[stats.mean - stats.low], [stats.high - stats.mean]] if interval else None,
                           error_kw={"capsize": 2, "elinewidth": 1})
                    if len(stats.values) > 1:
                        ax.plot([x] * len(stats.values), list(stats.values), marker=".", linestyle="none",
                                color="black", markersize=3, alpha=0.6)
            ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8, rotation=15)
            ax.set_title(f"{bench}, {mode}" if mode else bench, fontsize=10)
            ax.set_ylabel(metrics[(bench, chart)])
            ax.grid(True, axis="y", alpha=0.3)
        plotted = (st for rows in modes.values() for per_group in rows.values() for st in per_group.values())
        _legend(fig, palette, groups, _unmatched_models(report), marker="s", single=_single(plotted))
        plots.append(Plot(f"{_slug(bench)}_{_slug(chart)}", f"{bench} by {chart}",
                          f"{bench}: {metrics[(bench, chart)]} by {chart} as its aggregator reports it, a panel per "
                          f"mode, a bar per model: the mean over seeds (dots: each seed); error {T_INTERVAL}.", fig))
    return plots


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "other"
