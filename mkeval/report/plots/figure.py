"""What every figure of the report shares: the ``Plot``, its Agg canvas, one colour per model, the
legend, error bars, marks beside points, log axes, and the captions' wording of intervals."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Iterable

from ...results import CellResult
from ...results.aggregate import SeedStats
from ..core import Report
from ..marks import MARK_SYMBOLS

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


def _offsets(groups: int, width: float = 0.7) -> list[float]:
    """Offsets of ``groups`` side-by-side items inside a category of the given width."""
    if groups <= 1:
        return [0.0]
    step = width / groups
    return [-width / 2 + step * (i + 0.5) for i in range(groups)]
