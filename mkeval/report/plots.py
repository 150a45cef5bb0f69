"""The figures of ``mkeval report DIR --html``, drawn from a built ``Report`` (docs/report.md).

Each ``draw_*`` function returns the ``Plot``s its part of the run supports, and none when the run
has nothing for it (no downstream results, a single precision or length): a plot is only drawn
for what exists. Values that are None or not finite (a diverged cell) are left out, never drawn
as zero. Every mark a number carries is drawn where the number is: a mark's symbol beside the
point or bar, ``≠`` (size not matched) after the model's name in the legend, and a task mode
that has no score (degenerate, skipped, failed) as that word in place of its bar.

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas, not pyplot: no global
backend switch and nothing kept alive between reports. matplotlib is imported only when a
figure is made, so ``mkeval report`` without ``--html`` never loads it.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..results.aggregate import LMSummary, SeedStats, group_by
from .core import (FEWER_SHOTS_SYMBOL, MARK_SYMBOLS, TIE_SYMBOL, TRUNCATED_SHARE, TRUNCATED_SYMBOL, Report,
                     memory_header)
from ..results import CellResult, atomic_write

DPI = 100
PANEL = (4.6, 3.3)  # inches per panel
COLUMNS = 3  # panels per row

T_INTERVAL = ("bars: 95% Student-t interval of the mean over seeds (n ≥ 2); a value from a single seed has no "
              "error bar, since the spread over training seeds is unknown (the legend says so)")
NO_INTERVAL, NO_BAND = "no error bar", "no band"
SIZE_NOTE = f"{MARK_SYMBOLS['size_not_matched']} after a model's name: its size was not matched to the reference's"


@dataclass
class Plot:
    """One figure: ``name`` is its file stem under ``plots/``; the caption says what is drawn and which interval."""

    name: str
    title: str
    caption: str
    figure: Any  # matplotlib.figure.Figure

    def png(self) -> bytes:
        buf = io.BytesIO()
        # no timestamp or version in the file: the same results give the same bytes
        self.figure.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        return buf.getvalue()


# --------------------------------------------------------------------------- helpers
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figure(panels: int, columns: int = COLUMNS, size: tuple[float, float] = PANEL) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes in rows of ``columns``, drawn by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(size[0] * columns + 1.6, size[1] * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


class Palette:
    """One colour per model (or downstream group) across every figure of a report."""

    def __init__(self, names: Iterable[str]) -> None:
        from matplotlib import colormaps

        colours = colormaps["tab10"].colors
        self.colours = {n: colours[i % len(colours)] for i, n in enumerate(dict.fromkeys(names))}

    def __call__(self, name: str) -> Any:
        return self.colours.get(name, "0.4")


def _unmatched_models(report: Report) -> set[str]:
    return {r.model_name for r in report.results if "size_not_matched" in (r.marks or {})}


def _label(name: str, unmatched: set[str]) -> str:
    return name + (f" {MARK_SYMBOLS['size_not_matched']}" if name in unmatched else "")


def _symbols(cells: Iterable[CellResult], *marks: str) -> str:
    found = {k for r in cells for k in (r.marks or {})}
    return "".join(MARK_SYMBOLS[k] for k in marks if k in found)


def _legend(fig: Any, palette: Palette, names: Iterable[str], unmatched: set[str], marker: str = "o",
            single: str = "") -> None:
    """The models' colours; ``single`` says, under the title, what a one-seed value lacks (its interval or band)."""
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(names))
    if names:
        handles = [Line2D([], [], color=palette(n), marker=marker, label=_label(n, unmatched)) for n in names]
        title = "model" + (f"\n(one seed: {single})" if single else "")
        fig.legend(handles=handles, loc="outside right upper", title=title, fontsize=9, title_fontsize=9)


def _errorbar(ax: Any, x: float, stats: SeedStats, colour: Any, marker: str = "o", dots: bool = True) -> None:
    """The mean with its seed t-interval (none with one seed) and each seed's value as a small dot."""
    if stats.mean is None:
        return
    if stats.low is not None and stats.high is not None:
        ax.errorbar([x], [stats.mean], yerr=[[stats.mean - stats.low], [stats.high - stats.mean]], fmt=marker,
                    color=colour, capsize=3, markersize=5)
    else:
        ax.plot([x], [stats.mean], marker=marker, color=colour, markersize=5, linestyle="none")
    if dots and len(stats.values) > 1:
        ax.plot([x] * len(stats.values), list(stats.values), marker=".", color=colour, alpha=0.45,
                linestyle="none", markersize=4)


def _single(stats: Iterable[SeedStats]) -> str:
    """NO_INTERVAL when some plotted value comes from a single seed."""
    return NO_INTERVAL if any(st.mean is not None and st.n == 1 for st in stats) else ""


def _annotate(ax: Any, x: float, y: float, text: str, colour: Any = "black") -> None:
    if text and _finite(x) and _finite(y):
        ax.annotate(text, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=11, color=colour,
                    fontweight="bold")


def _log_if_positive(ax: Any, axis: str, values: Iterable[Any]) -> None:
    """A log axis when the values are positive and span a factor of 10 or more, labelled with plain numbers."""
    values = [v for v in values if _finite(v)]
    if not values or min(values) <= 0 or max(values) / min(values) < 10:
        return
    from matplotlib.ticker import FuncFormatter, NullFormatter

    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.6g}"))
    target.set_minor_formatter(NullFormatter())


def _tokens_per_step(r: CellResult) -> float | None:
    """Training tokens per optimiser step: ``batch_size × seq_len`` of the cell's protocol."""
    batch = ((r.config or {}).get("protocol") or {}).get("batch_size")
    if _finite(batch) and batch > 0:
        return float(batch * r.seq_len)
    return r.train_tokens / r.steps if _finite(r.train_tokens) and _finite(r.steps) and r.steps > 0 else None


def _trained_summaries(report: Report) -> list[LMSummary]:
    """Summaries of the cells that trained (each checkpoint at the precision it was trained at)."""
    return [s for s in report.summaries if s.cells and s.cells[0].precision_role == "trained"]


def _model_order(report: Report) -> list[str]:
    names = [r.model_name for r in report.results]
    if report.downstream is not None:
        names += list(report.downstream.groups)
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- language modelling
def draw_learning_curves(report: Report, palette: Palette) -> list[Plot]:
    """Validation perplexity against training tokens, one panel per dataset, length and training precision."""
    cells = [r for r in report.results if r.precision_role == "trained" and _tokens_per_step(r)
             and any(_finite(s) and _finite(p) for s, p in zip(r.eval_steps or [], r.epoch_perplexities or []))]
    panels = group_by(cells, lambda r: (r.dataset, r.seq_len, r.trained_precision or r.precision))
    if not panels:
        return []
    unmatched = _unmatched_models(report)
    fig, axes = _figure(len(panels))
    drawn: list[str] = []
    single = False
    for ax, ((dataset, seq_len, precision), mine) in zip(axes, panels.items()):
        ys: list[float] = []
        for (model,), runs in group_by(mine, lambda r: (r.model_name,)).items():
            by_tokens: dict[float, list[float]] = {}
            for r in runs:
                per_step = _tokens_per_step(r)
                if per_step is None:
                    continue
                for step, ppl in zip(r.eval_steps, r.epoch_perplexities):
                    if _finite(step) and _finite(ppl):
                        by_tokens.setdefault(step * per_step, []).append(float(ppl))
            if not by_tokens:
                continue
            xs = sorted(by_tokens)
            mean = [sum(by_tokens[x]) / len(by_tokens[x]) for x in xs]
            colour = palette(model)
            ax.plot(xs, mean, marker="o", markersize=3, color=colour)
            if len(runs) > 1:
                ax.fill_between(xs, [min(by_tokens[x]) for x in xs], [max(by_tokens[x]) for x in xs], color=colour,
                                alpha=0.2, linewidth=0)
            single |= len(runs) == 1
            _annotate(ax, xs[-1], mean[-1], _symbols(runs, "valid_is_train_text"), colour)
            ys += [v for x in xs for v in by_tokens[x]]
            drawn.append(model)
        _log_if_positive(ax, "y", ys)
        ax.set_title(f"{dataset}, seq {seq_len}, trained at {precision}", fontsize=10)
        ax.set_xlabel("training tokens")
        ax.set_ylabel("validation perplexity")
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, palette, drawn, unmatched, single=NO_BAND if single else "")
    return [Plot("learning_curves", "Learning curves",
                 "Validation perplexity at each evaluation against training tokens (optimiser step × batch size × "
                 "sequence length from the cell's protocol), one panel per dataset, sequence length and training "
                 "precision. Line: mean over seeds; band: min–max over seeds (drawn with two seeds or more). "
                 f"{MARK_SYMBOLS['valid_is_train_text']} at a line's end: its validation read the training text. "
                 + SIZE_NOTE + ".", fig)]


def _offsets(groups: int, width: float = 0.7) -> list[float]:
    """Offsets of ``groups`` side-by-side items inside a category of the given width."""
    if groups <= 1:
        return [0.0]
    step = width / groups
    return [-width / 2 + step * (i + 0.5) for i in range(groups)]


def draw_test_perplexity(report: Report, palette: Palette) -> list[Plot]:
    """Test perplexity per dataset with the seed t-interval, one panel per length and training precision."""
    rows = [s for s in _trained_summaries(report) if s.numbers["test_perplexity"].mean is not None]
    panels = group_by(rows, lambda s: (s.seq_len, s.trained_at))
    if not panels:
        return []
    unmatched = _unmatched_models(report)
    fig, axes = _figure(len(panels))
    drawn: list[str] = []
    for ax, ((seq_len, precision), mine) in zip(axes, panels.items()):
        datasets = list(dict.fromkeys(s.dataset for s in mine))
        models = list(dict.fromkeys(s.model_name for s in mine))
        offsets = _offsets(len(models))
        ys = []
        for s in mine:
            x = datasets.index(s.dataset) + offsets[models.index(s.model_name)]
            stats = s.numbers["test_perplexity"]
            _errorbar(ax, x, stats, palette(s.model_name))
            _annotate(ax, x, stats.high if stats.high is not None else stats.mean,
                      _symbols(s.cells, "test_contamination"))
            ys += [stats.mean, stats.low, stats.high, *stats.values]
            drawn.append(s.model_name)
        _log_if_positive(ax, "y", ys)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_xlim(-0.6, len(datasets) - 0.4)
        ax.set_title(f"seq {seq_len}, trained and evaluated at {precision}", fontsize=10)
        ax.set_ylabel("test perplexity")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    _legend(fig, palette, drawn, unmatched, single=_single(s.numbers["test_perplexity"] for s in rows))
    return [Plot("test_perplexity", "Test perplexity per dataset",
                 "Test perplexity of the best checkpoint, mean over seeds (dots: each seed), one panel per sequence "
                 f"length and precision. Error {T_INTERVAL}. {MARK_SYMBOLS['test_contamination']} beside a point: "
                 "test text was read for training or selection, so it is not held out. " + SIZE_NOTE + ".", fig)]


def _line_panels(report: Report, palette: Palette, name: str, title: str, caption: str, panel_key: Any,
                 x_key: Any, x_label: str, panel_title: Any, categorical: bool) -> list[Plot]:
    """Test perplexity against one dimension, a line per model, a panel per value of the others."""
    rows = [s for s in report.summaries if s.numbers["test_perplexity"].mean is not None]
    panels = group_by(rows, panel_key)
    panels = {k: v for k, v in panels.items() if len({x_key(s) for s in v}) > 1}
    if not panels:
        return []
    unmatched = _unmatched_models(report)
    fig, axes = _figure(len(panels))
    drawn: list[str] = []
    for ax, (key, mine) in zip(axes, panels.items()):
        order = _precision_order(mine) if categorical else sorted({x_key(s) for s in mine})
        models = list(dict.fromkeys(s.model_name for s in mine))
        ys = []
        for (model,), lines in group_by(mine, lambda s: (s.model_name,)).items():
            lines = sorted(lines, key=lambda s: order.index(x_key(s)))
            # categories: the models side by side, so equal values do not hide each other
            dodge = _offsets(len(models), 0.3)[models.index(model)]
            xs = [order.index(x_key(s)) + dodge if categorical else x_key(s) * 2 ** dodge for s in lines]
            stats = [s.numbers["test_perplexity"] for s in lines]
            colour = palette(model)
            ax.plot([x for x, st in zip(xs, stats) if st.mean is not None],
                    [st.mean for st in stats if st.mean is not None], color=colour, alpha=0.7)
            for x, st, s in zip(xs, stats, lines):
                _errorbar(ax, x, st, colour, dots=False)
                _annotate(ax, x, st.high if st.high is not None else st.mean, _symbols(s.cells, "test_contamination"))
                ys += [st.mean, st.low, st.high]
            drawn.append(model)
        _log_if_positive(ax, "y", ys)
        if categorical:
            ax.set_xticks(range(len(order)), order)
            ax.set_xlim(-0.5, len(order) - 0.5)
        else:
            ax.set_xscale("log", base=2)
            ax.set_xticks(order, [str(v) for v in order])
            ax.minorticks_off()
        ax.set_title(panel_title(key), fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel("test perplexity")
        ax.grid(True, which="both", alpha=0.3)
    plotted = (s.numbers["test_perplexity"] for v in panels.values() for s in v)
    _legend(fig, palette, drawn, unmatched, single=_single(plotted))
    return [Plot(name, title, caption, fig)]


def _precision_order(summaries: list[LMSummary]) -> list[str]:
    """Evaluation precisions from the most bits to the fewest (the training precision first on a tie)."""
    bits = {}
    for s in summaries:
        bits.setdefault(s.evaluated_at, (-(s.cells[0].bits or 0), s.evaluated_at != s.trained_at, s.evaluated_at))
    return sorted(bits, key=lambda p: bits[p])


def draw_precision(report: Report, palette: Palette) -> list[Plot]:
    return _line_panels(
        report, palette, "perplexity_by_precision", "Perplexity against evaluation precision",
        "Test perplexity of each checkpoint at every precision it was evaluated at (the training precision, "
        "then post-training quantized or evaluation-only precisions, by bits; the models side by side), a line "
        "per model, a panel per "
        f"dataset, sequence length and training precision. Points: mean over seeds; error {T_INTERVAL}. "
        f"{MARK_SYMBOLS['test_contamination']}: test text not held out. " + SIZE_NOTE + ".",
        lambda s: (s.dataset, s.seq_len, s.trained_at), lambda s: s.evaluated_at, "evaluation precision",
        lambda k: f"{k[0]}, seq {k[1]}, trained at {k[2]}", categorical=True)


def draw_seq_len(report: Report, palette: Palette) -> list[Plot]:
    return _line_panels(
        report, palette, "perplexity_by_seq_len", "Perplexity against sequence length",
        "Test perplexity against the sequence length the model was trained and evaluated at (log₂ axis; the "
        "models' points are shifted a little sideways so that equal values stay visible), a line per model, a "
        "panel per dataset and precision. Points: mean over seeds; error "
        f"{T_INTERVAL}. {MARK_SYMBOLS['test_contamination']}: test text not held out. " + SIZE_NOTE + ".",
        lambda s: (s.dataset, s.trained_at, s.evaluated_at), lambda s: s.seq_len, "sequence length (tokens)",
        lambda k: f"{k[0]}, trained at {k[1]}" + (f", evaluated at {k[2]}" if k[2] != k[1] else ""),
        categorical=False)


def draw_cost(report: Report, palette: Palette) -> list[Plot]:
    """Test perplexity against training FLOPs per token, peak memory and tokens/s, a row per dataset."""
    rows = [s for s in _trained_summaries(report) if s.numbers["test_perplexity"].mean is not None]
    by_dataset = group_by(rows, lambda s: (s.dataset,))
    if not by_dataset:
        return []
    unmatched = _unmatched_models(report)
    memory = memory_header(report.results).replace(" MiB", "")
    measures = [("training FLOPs per token", _flops_per_token),
                (f"{memory} (MiB)", lambda s: _mean(s, "peak_memory_mb")),
                ("training tokens/s", lambda s: _mean(s, "tokens_per_second"))]
    fig, axes = _figure(len(by_dataset) * len(measures), columns=len(measures))
    drawn: list[str] = []
    flop_mark = MARK_SYMBOLS["flops_incomplete"]
    for row, ((dataset,), mine) in enumerate(by_dataset.items()):
        lengths, precisions = len({s.seq_len for s in mine}) > 1, len({s.trained_at for s in mine}) > 1
        for col, (label, measure) in enumerate(measures):
            ax = axes[row * len(measures) + col]
            xs, ys = [], []
            for s in mine:
                x, stats = measure(s), s.numbers["test_perplexity"]
                if not _finite(x) or stats.mean is None:
                    continue
                _errorbar(ax, x, stats, palette(s.model_name), dots=False)
                marks = _symbols(s.cells, "test_contamination")
                if col == 0:
                    marks += _symbols(s.cells, "flops_incomplete")
                _annotate(ax, x, stats.mean, marks)
                variant = ", ".join(([f"seq {s.seq_len}"] if lengths else []) + ([s.trained_at] if precisions else []))
                if variant:
                    ax.annotate(variant, (x, stats.mean), xytext=(5, -10), textcoords="offset points", fontsize=7,
                                color="0.3")
                xs.append(x)
                ys += [stats.mean, stats.low, stats.high]
                drawn.append(s.model_name)
            ax.margins(0.15)  # room for the marks and labels beside the points
            _log_if_positive(ax, "x", xs)
            _log_if_positive(ax, "y", ys)
            ax.set_xlabel(label)
            ax.set_ylabel(f"test perplexity ({dataset})" if col == 0 else "")
            ax.grid(True, which="both", alpha=0.3)
            if not xs:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="0.4")
    _legend(fig, palette, drawn, unmatched, single=_single(s.numbers["test_perplexity"] for s in rows))
    return [Plot("cost_quality", "Cost against quality",
                 "Test perplexity (mean over seeds, error " + T_INTERVAL + ") against training FLOPs per token "
                 "((forward + backward FLOPs of one step) / (batch size × sequence length)), peak memory during "
                 "training and training tokens per second (means over seeds), for the cells that trained; a row "
                 f"per dataset. {flop_mark} beside a point on the FLOPs panel: some op ran without a FLOP formula, "
                 f"so the count is a lower bound (docs/flops.md). {MARK_SYMBOLS['test_contamination']}: test text "
                 "not held out. " + SIZE_NOTE + ".", fig)]


def _mean(s: LMSummary, name: str) -> float | None:
    values = [getattr(r, name) for r in s.cells if _finite(getattr(r, name, None))]
    return sum(values) / len(values) if values else None


def _flops_per_token(s: LMSummary) -> float | None:
    values = []
    for r in s.cells:
        per_step = _tokens_per_step(r)
        if per_step and _finite(r.forward_flops) and _finite(r.backward_flops):
            values.append((r.forward_flops + r.backward_flops) / per_step)
    return sum(values) / len(values) if values else None


def draw_effective_context(report: Report, palette: Palette) -> list[Plot]:
    """Total variation at the last position against the distance of the changed token, a line per model."""
    cells = [r for r in report.results if isinstance(r.effective_context, dict)
             and any(_finite(d) and _finite(tv) for d, tv in zip(r.effective_context.get("distances") or [],
                                                                 r.effective_context.get("total_variation") or []))]
    panels = group_by(cells, lambda r: (r.dataset, r.seq_len, r.trained_precision or r.precision))
    if not panels:
        return []
    unmatched = _unmatched_models(report)
    fig, axes = _figure(len(panels))
    drawn: list[str] = []
    single = False
    for ax, ((dataset, seq_len, precision), mine) in zip(axes, panels.items()):
        ticks: set[int] = set()
        for (model,), runs in group_by(mine, lambda r: (r.model_name,)).items():
            by_d: dict[float, list[float]] = {}
            for r in runs:
                probe = r.effective_context
                for d, tv in zip(probe.get("distances") or [], probe.get("total_variation") or []):
                    if _finite(d) and _finite(tv):
                        by_d.setdefault(d, []).append(float(tv))
            if not by_d:
                continue
            xs = sorted(by_d)
            colour = palette(model)
            ax.plot(xs, [sum(by_d[d]) / len(by_d[d]) for d in xs], marker="o", markersize=3, color=colour)
            if len(runs) > 1:
                ax.fill_between(xs, [min(by_d[d]) for d in xs], [max(by_d[d]) for d in xs], color=colour, alpha=0.15,
                                linewidth=0)
            single |= len(runs) == 1
            ticks.update(int(d) for d in xs)
            drawn.append(model)
        ax.set_xscale("symlog", linthresh=1, base=2)  # d = 0 (the token at t itself) stays on the axis
        if ticks:
            ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(f"{dataset}, seq {seq_len}, trained at {precision}", fontsize=10)
        ax.set_xlabel("distance d of the changed token (tokens back)")
        ax.set_ylabel("total variation at t")
        ax.grid(True, alpha=0.3)
    _legend(fig, palette, drawn, unmatched, single=NO_BAND if single else "")
    return [Plot("effective_context", "Effective context",
                 "How much the best checkpoint's next-token distribution at the last position t of a test window "
                 "changes (mean total variation distance, 0 to 1) when the token d positions back is replaced "
                 "(mkeval.probes); d = 0 is the token at t itself (symlog axis). Line: mean over seeds; band: "
                 "min–max over seeds. A model that ignores far tokens falls to 0. " + SIZE_NOTE + ".", fig)]


# --------------------------------------------------------------------------- downstream
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
        for b, row, metric, stats in d.aggregates:
            if b == bench and b != "mmlu":  # MMLU's aggregates have their own figure
                items.append((f"{row} · {metric}", metric, stats))
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


MMLU_ROW = re.compile(r"^(?P<category>.+) \((?P<mode>[^()]+)\)$")


def draw_mmlu(report: Report, palette: Palette) -> list[Plot]:
    """MMLU accuracy by category, a panel per mode (0-shot, 5-shot, fine-tuned ...), bars per model group."""
    d = report.downstream
    if d is None:
        return []
    modes: dict[str, dict[str, dict[str, SeedStats]]] = {}  # mode -> category -> group -> stats
    for bench, row, metric, stats in d.aggregates:
        match = MMLU_ROW.match(row)
        if bench == "mmlu" and metric == "accuracy" and match:
            modes.setdefault(match["mode"], {})[match["category"]] = stats
    if not modes:
        return []
    groups = list(d.groups)
    fig, axes = _figure(len(modes), columns=2, size=(5.6, 3.4))
    for ax, (mode, categories) in zip(axes, modes.items()):
        names = sorted(categories, key=lambda c: (c != "all subjects", c))
        offsets = _offsets(len(groups))
        for i, category in enumerate(names):
            for j, group in enumerate(groups):
                stats = categories[category].get(group)
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
        ax.set_title(f"MMLU, {mode}", fontsize=10)
        ax.set_ylabel("accuracy")
        ax.grid(True, axis="y", alpha=0.3)
    plotted = (st for categories in modes.values() for per_group in categories.values() for st in per_group.values())
    _legend(fig, palette, groups, _unmatched_models(report), marker="s", single=_single(plotted))
    return [Plot("mmlu_categories", "MMLU by category",
                 "MMLU accuracy (weighted by questions) over all evaluated subjects and per category, a panel per "
                 f"mode, a bar per model: the mean over seeds (dots: each seed); error {T_INTERVAL}.", fig)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "other"


# --------------------------------------------------------------------------- all of them
DRAWERS = (draw_learning_curves, draw_test_perplexity, draw_precision, draw_seq_len, draw_downstream, draw_mmlu,
           draw_cost, draw_effective_context)


def draw_all(report: Report) -> list[Plot]:
    """Every figure the report's results support, in the order the page shows them."""
    palette = Palette(_model_order(report))
    return [plot for draw in DRAWERS for plot in draw(report, palette)]


STATIC_NAMES = {"learning_curves", "test_perplexity", "perplexity_by_precision", "perplexity_by_seq_len",
                "mmlu_categories", "cost_quality", "effective_context"}


def write_plots(plots: list[Plot], directory: Path) -> dict[str, bytes]:
    """``directory/{name}.png`` for each plot (atomically); removes this module's PNGs that a previous
    report drew and this one did not (a run that lost its downstream results keeps no stale figure).
    Returns name -> the PNG bytes written."""
    directory = Path(directory)
    written = {}
    for plot in plots:
        data = plot.png()
        atomic_write(directory / f"{plot.name}.png", lambda tmp, data=data: tmp.write_bytes(data))
        written[plot.name] = data
    if directory.is_dir():
        for path in directory.glob("*.png"):
            ours = path.stem in STATIC_NAMES or path.stem.startswith("downstream_")
            if ours and path.stem not in written:
                path.unlink()
    return written

