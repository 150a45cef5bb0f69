"""Language-modelling figures: learning curves, test perplexity per dataset, against precision and
sequence length, against cost, and effective context."""

from __future__ import annotations

from typing import Any

from ...results import CellResult
from ...results.aggregate import LMSummary, group_by, seed_stats
from ..core import Report
from ..lm import memory_header
from ..marks import MARK_SYMBOLS
from .figure import (NO_BAND, SIZE_NOTE, T_INTERVAL, Palette, Plot, _annotate, _errorbar, _figure, _finite, _legend,
                     _log_if_positive, _offsets, _single, _symbols, _unmatched_models)


def _tokens_per_step(r: CellResult) -> float | None:
    """Training tokens per optimiser step: ``batch_size × seq_len`` of the cell's protocol."""
    batch = ((r.config or {}).get("protocol") or {}).get("batch_size")
    if _finite(batch) and batch > 0:
        return float(batch * r.seq_len)
    return r.train_tokens / r.steps if _finite(r.train_tokens) and _finite(r.steps) and r.steps > 0 else None


def _trained_summaries(report: Report) -> list[LMSummary]:
    """Summaries of the cells that trained (each checkpoint at the precision it was trained at)."""
    return [s for s in report.summaries if s.cells and s.cells[0].precision_role == "trained"]


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
    return seed_stats([getattr(r, name, None) for r in s.cells]).mean


def _flops_per_token(s: LMSummary) -> float | None:
    return seed_stats([(r.forward_flops + r.backward_flops) / _tokens_per_step(r) for r in s.cells
                       if _tokens_per_step(r) and _finite(r.forward_flops) and _finite(r.backward_flops)]).mean


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
                 "(mkeval.engine.probes); d = 0 is the token at t itself (symlog axis). Line: mean over seeds; band: "
                 "min–max over seeds. A model that ignores far tokens falls to 0. " + SIZE_NOTE + ".", fig)]
