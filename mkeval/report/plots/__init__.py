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

from pathlib import Path

from ...results import atomic_write, read_json_file, write_json
from ..core import Report
from .downstream import draw_charts, draw_downstream
from .figure import Palette, Plot
from .lm import (draw_cost, draw_effective_context, draw_learning_curves, draw_precision, draw_seq_len,
                 draw_test_perplexity)

__all__ = ["DRAWERS", "Plot", "draw_all", "write_plots"]


def _model_order(report: Report) -> list[str]:
    names = [r.model_name for r in report.results]
    if report.downstream is not None:
        names += list(report.downstream.groups)
    return list(dict.fromkeys(names))


DRAWERS = (draw_learning_curves, draw_test_perplexity, draw_precision, draw_seq_len, draw_downstream, draw_charts,
           draw_cost, draw_effective_context)


def draw_all(report: Report) -> list[Plot]:
    """Every figure the report's results support, in the order the page shows them."""
    palette = Palette(_model_order(report))
    return [plot for draw in DRAWERS for plot in draw(report, palette)]


INDEX = "plots.json"  # the names this module drew last time, so a later report can remove what it no longer draws


def write_plots(plots: list[Plot], directory: Path) -> dict[str, bytes]:
    """``directory/{name}.png`` for each plot (atomically); removes the PNGs a previous report drew and
    this one did not (a run that lost its downstream results keeps no stale figure); other files stay.
    Returns name -> the PNG bytes written."""
    directory = Path(directory)
    before, why = read_json_file(directory / INDEX) if (directory / INDEX).exists() else ([], None)
    written = {}
    for plot in plots:
        data = plot.png()
        atomic_write(directory / f"{plot.name}.png", lambda tmp, data=data: tmp.write_bytes(data))
        written[plot.name] = data
    for name in (before if why is None and isinstance(before, list) else []):
        if isinstance(name, str) and name not in written:
            (directory / f"{name}.png").unlink(missing_ok=True)
    if written or directory.is_dir():
        write_json(directory / INDEX, sorted(written))
    return written
