"""The task metrics over arrays, for thousands of resamples at once.

They are written again here because scipy resamples thousands of times at once and
``mkeval.metrics`` (scikit-learn, the reference these are tested against) scores one list of
records at a time: each metric is a function of per-example (MultiRC: per-question) feature
columns, e.g. confusion counts for F1, MCC and macro-F1, ranks for Spearman. numpy is imported
inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

    from .scorer import _Units

# A metric turns prediction records into feature columns, one row per resampling unit (an example;
# a question for MultiRC), and features gathered for many resamples at once into metric values.
# "Summed" metrics need only the columns' sums over the units of a resample; the correlations need
# the gathered values themselves.

class _Metric:
    names: tuple[str, ...]
    summed = True
    linear = False

    def columns(self, refs: list, preds: list, units: _Units) -> np.ndarray:
        raise NotImplementedError

    def values(self, data: np.ndarray, records: Any, n: Any) -> list[np.ndarray]:
        """``data``: column sums ``(..., k)`` (summed metrics) or gathered rows ``(..., n, k)``."""
        raise NotImplementedError


def _ratio(num: np.ndarray, den: Any) -> np.ndarray:
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


class _Accuracy(_Metric):
    names = ("accuracy",)
    linear = True  # a value that is a column sum over n: the difference of two is that of the columns

    def columns(self, refs, preds, units):
        import numpy as np

        return units.sum(np.array([p == r for p, r in zip(preds, refs)], float))

    def values(self, sums, records, n):
        return [sums[..., 0] / records]


class _F1(_Metric):
    """Binary F1 of the positive label, 0 when it is never predicted nor true (sklearn's zero_division=0)."""

    names = ("f1",)

    def __init__(self, positive: str) -> None:
        self.positive = positive

    def columns(self, refs, preds, units):
        import numpy as np

        pred = np.array([p == self.positive for p in preds])
        true = np.array([r == self.positive for r in refs])
        return units.sum(np.stack([pred & true, pred & ~true, ~pred & true], 1).astype(float))

    def values(self, sums, records, n):
        tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
        return [_ratio(2 * tp, 2 * tp + fp + fn)]


class _MacroF1(_Metric):
    names = ("macro_f1",)

    def __init__(self, labels: Sequence[Any]) -> None:
        self.labels = list(labels)

    def columns(self, refs, preds, units):
        import numpy as np

        cols = []
        for label in self.labels:
            pred = np.array([p == label for p in preds])
            true = np.array([r == label for r in refs])
            cols += [pred & true, pred & ~true, ~pred & true]
        return units.sum(np.stack(cols, 1).astype(float))

    def values(self, sums, records, n):
        tp, fp, fn = sums[..., 0::3], sums[..., 1::3], sums[..., 2::3]
        return [_ratio(2 * tp, 2 * tp + fp + fn).mean(-1)]


class _Matthews(_Metric):
    """Multiclass MCC from the confusion margins, as scikit-learn computes it (0 when undefined)."""

    names = ("matthews_corrcoef",)

    def __init__(self, labels: Sequence[Any]) -> None:
        self.labels = list(labels)  # every value any side predicts or holds true

    def columns(self, refs, preds, units):
        import numpy as np

        index = {v: i for i, v in enumerate(self.labels)}
        k = len(self.labels)
        true, pred = np.zeros((len(refs), k)), np.zeros((len(refs), k))
        true[np.arange(len(refs)), [index[r] for r in refs]] = 1
        pred[np.arange(len(refs)), [index[p] for p in preds]] = 1
        right = np.array([p == r for p, r in zip(preds, refs)], float)[:, None]
        return units.sum(np.hstack([true, pred, right]))

    def values(self, sums, records, n):
        import numpy as np

        k = len(self.labels)
        t, p, c = sums[..., :k], sums[..., k:2 * k], sums[..., 2 * k]
        cov_tp = c * records - (t * p).sum(-1)
        cov_pp = records ** 2 - (p * p).sum(-1)
        cov_tt = records ** 2 - (t * t).sum(-1)
        den = cov_tt * cov_pp
        with np.errstate(divide="ignore", invalid="ignore"):
            return [np.where(den > 0, cov_tp / np.sqrt(np.where(den > 0, den, 1)), 0.0)]


class _Squad(_Metric):
    """SQuAD v1.1 / ReCoRD: per-example exact match and token F1 (max over golds), from mkeval.metrics."""

    names = ("em", "f1")
    linear = True

    def columns(self, refs, preds, units):
        import numpy as np

        from ..metrics import squad_exact_match, squad_f1  # the official rules live there

        return units.sum(np.array([[squad_exact_match(p, r), squad_f1(p, r)] for p, r in zip(preds, refs)], float))

    def values(self, sums, records, n):
        return [sums[..., 0] / records, sums[..., 1] / records]


class _MultiRC(_Metric):
    """F1a over every answer option; EM over questions (every option of the question right)."""

    names = ("f1a", "em")

    def __init__(self, positive: str) -> None:
        self.f1 = _F1(positive)

    def columns(self, refs, preds, units):
        import numpy as np

        if not units.grouped:
            raise ValueError("metric 'multirc' needs each record's question ('group')")
        wrong = units.sum(np.array([p != r for p, r in zip(preds, refs)], float))
        return np.hstack([self.f1.columns(refs, preds, units), (wrong == 0).astype(float)])

    def values(self, sums, records, n):
        return self.f1.values(sums[..., :3], records, n) + [sums[..., 3] / n]


class _Correlation(_Metric):
    """Pearson, or Spearman (Pearson of average ranks); 0 when either side is constant, as mkeval.metrics."""

    summed = False

    def __init__(self, name: str, values: Sequence[Any]) -> None:
        import numpy as np

        self.names = (name,)
        # Spearman's columns are each value's place among every value any side has: ranks within a
        # resample then come from counting places, without sorting each resample.
        self.places = np.unique(np.array([float(v) for v in values], float)) if name == "spearman" else None

    def columns(self, refs, preds, units):
        import numpy as np

        if units.grouped:
            raise ValueError(f"metric {self.names[0]!r} is per example; these records are grouped by question")
        xy = np.array([[float(r), float(p)] for r, p in zip(refs, preds)], float)
        return xy if self.places is None else np.searchsorted(self.places, xy).astype(float)

    def values(self, rows, records, n):
        import numpy as np

        x, y = rows[..., 0], rows[..., 1]
        constant = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
        if self.places is not None:
            x, y = _average_ranks(x, len(self.places)), _average_ranks(y, len(self.places))
        x = x - x.mean(-1, keepdims=True)
        y = y - y.mean(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
        return [np.where(constant, 0.0, np.clip(r, -1.0, 1.0))]


def _average_ranks(places: np.ndarray, count: int) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (``scipy.stats.rankdata``'s
    default), of values given as places 0..count-1 in their sorted order."""
    import numpy as np

    flat = places.astype(np.intp).reshape(-1, places.shape[-1])
    rows = flat.shape[0]
    seen = np.bincount((flat + (np.arange(rows) * count)[:, None]).ravel(), minlength=rows * count)
    seen = seen.reshape(rows, count)
    average = np.cumsum(seen, axis=1) - seen + (seen + 1) / 2  # values below, then the middle of the ties
    return np.take_along_axis(average, flat, axis=1).reshape(places.shape)


def _metric(name: str, labels: Sequence[Any], positive: Any, present: Sequence[Any]) -> _Metric:
    if name == "accuracy":
        return _Accuracy()
    if name == "f1":
        if positive is None:
            raise ValueError("metric 'f1' needs the task's positive label (MetricContext.positive)")
        return _F1(positive)
    if name == "macro_f1":
        return _MacroF1(labels or present)
    if name == "matthews_corrcoef":
        return _Matthews(present)
    if name in ("pearson", "spearman"):
        return _Correlation(name, present)
    if name in ("squad", "record"):
        return _Squad()
    if name == "multirc":
        return _MultiRC("1" if positive is None else positive)
    from ..errors import UsageError

    raise UsageError(f"unknown metric {name!r}: mkeval.significance knows accuracy, f1, macro_f1, "
                     "matthews_corrcoef, pearson, spearman, squad, record and multirc")
