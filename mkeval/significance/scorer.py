"""A task's score over aligned prediction lists, for every resample at once (``_Scorer``), and
``task_metrics``, the same metrics on the records as they are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .metrics import _metric

if TYPE_CHECKING:
    import numpy as np


class _Units:
    """Which resampling unit each record belongs to: itself, or its question (records with ``group``)."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        import numpy as np

        self.grouped = bool(records) and all("group" in r for r in records)
        if self.grouped:
            ids: dict[Any, int] = {}
            self.index = np.array([ids.setdefault(r["group"], len(ids)) for r in records])
            self.count = len(ids)
        else:
            self.index, self.count = np.arange(len(records)), len(records)

    def sum(self, per_record: np.ndarray) -> np.ndarray:
        """Per-record values ``(records,)`` or ``(records, k)`` summed per unit: ``(units, k)``."""
        import numpy as np

        flat = per_record.reshape(len(per_record), -1)
        if not self.grouped:
            return flat
        return np.stack([np.bincount(self.index, flat[:, j], self.count) for j in range(flat.shape[1])], 1)


class _Table:
    """Feature rows ``(units, k)``, also kept as one compact contiguous array per column: gathering
    a column for thousands of resamples is most of the work, and int8 moves 8x less than float64."""

    def __init__(self, rows: np.ndarray) -> None:
        import numpy as np

        self.rows = rows
        self.columns = []
        for k in range(rows.shape[1]):
            column = rows[:, k]
            if np.all(column == np.round(column)) and np.abs(column).max(initial=0) < 2 ** 31:
                column = column.astype(np.min_scalar_type(-int(np.abs(column).max(initial=0)) - 1))
            self.columns.append(np.ascontiguousarray(column))

    def sums(self, index: np.ndarray) -> np.ndarray:
        """Column sums over each resample ``index[..., :]``: ``(..., k)``."""
        import numpy as np

        return np.stack([c[index].sum(-1, dtype=np.float64 if c.dtype.kind == "f" else np.int64)
                         for c in self.columns], -1).astype(np.float64)


class _Scorer:
    """A task's metrics over aligned prediction lists ("sides": models or seeds) as feature tables.

    ``sides[s]`` holds side ``s``'s features, one row per unit, the units in the same order on every
    side; ``score`` gives the task score of every resample (an index array over units) at once.
    """

    def __init__(self, names: Sequence[str], labels: Sequence[Any], positive: Any,
                 sides: Sequence[Sequence[dict[str, Any]]]) -> None:
        import numpy as np

        if not names:
            raise ValueError("a task with no metrics has no score")
        if not sides or not sides[0]:
            raise ValueError(f"no prediction records to compute {', '.join(names)} from")
        self.units = _Units(sides[0])
        present = list(dict.fromkeys(v for side in sides for r in side for v in (r["reference"], r["prediction"])
                                     if isinstance(v, (str, int, float, bool))))
        self.metrics = [_metric(n, labels, positive, present) for n in names]
        self.summed_only = all(m.summed for m in self.metrics)
        self.sides = []
        for side in sides:
            refs, preds = [r["reference"] for r in side], [r["prediction"] for r in side]
            cols = [m.columns(refs, preds, self.units) for m in self.metrics]
            if self.units.grouped:  # records per question, for the per-record means
                cols.append(np.bincount(self.units.index, minlength=self.units.count)[:, None].astype(float))
            self.sides.append(_Table(np.hstack(cols)))
        self.slices, start = [], 0
        for m, c in zip(self.metrics, cols):
            self.slices.append(slice(start, start + c.shape[1]))
            start += c.shape[1]

    @property
    def names(self) -> list[str]:
        return [n for m in self.metrics for n in m.names]

    def all_units(self) -> np.ndarray:
        import numpy as np

        return np.arange(self.units.count)

    def values(self, index: np.ndarray, table: _Table | None = None,
               fixed: tuple[np.ndarray, int] | None = None) -> list[np.ndarray]:
        """Every metric value for each resample ``index[..., :]`` of the rows of ``table`` (default:
        side 0); ``fixed``: (column sums, count) of units that are in every resample besides."""
        table = self.sides[0] if table is None else table
        sums = table.sums(index) if any(m.summed for m in self.metrics) else None
        n = index.shape[-1]
        if fixed is not None:
            sums, n = sums + fixed[0], n + fixed[1]
        records = sums[..., -1] if self.units.grouped else n
        rows = None if self.summed_only else table.rows[index]
        out = []
        for m, cols in zip(self.metrics, self.slices):
            out += m.values(sums[..., cols] if m.summed else rows[..., cols], records, n)
        return out

    def score(self, index: np.ndarray, table: _Table | None = None,
              fixed: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        """The task score (unweighted mean of its metrics, as ``mkeval.metrics.task_score``)."""
        values = self.values(index, table, fixed)
        return sum(values) / len(values)


def task_metrics(records: Sequence[dict[str, Any]], names: Sequence[str], context: Any = None) -> dict[str, float]:
    """The metrics of ``records`` through the array implementation; equals ``mkeval.metrics.compute_metrics``."""
    labels = tuple(getattr(context, "labels", ()) or ())
    scorer = _Scorer(names, labels, getattr(context, "positive", None), [list(records)])
    values = scorer.values(scorer.all_units())
    if len(set(scorer.names)) < len(scorer.names):
        raise ValueError(f"metrics {', '.join(names)} would give two values of the same name")
    return {name: float(v) for name, v in zip(scorer.names, values)}
