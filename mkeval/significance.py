"""Is one model's downstream score really higher than another's? Comparisons with intervals and p-values.

One seed per model: the comparison is over evaluation examples only. Both models saw the same
examples, so predictions pair up by id; ``scipy.stats.bootstrap`` resamples the pairs (percentile
interval of the difference of the task score) and ``scipy.stats.permutation_test`` swaps the two
models' predictions within pairs (two-sided p; for plain accuracy its exact closed form, McNemar's
exact test, ``scipy.stats.binomtest``). Three or more seeds each: a t-test over the
seeds' task scores (paired by seed when both have the same seeds, else Welch), so that the
variance between training runs counts. A comparison involving a predictor that says the same
thing for every example, or prompt scores that are mostly ties, is flagged as not meaningful.
docs/statistics.md has the details and the limits.

The metrics are written again here over arrays, because scipy resamples thousands of times at
once and ``mkeval.metrics`` (scikit-learn, the reference these are tested against) scores one
list of records at a time: each metric is a function of per-example (MultiRC: per-question)
feature columns, e.g. confusion counts for F1, MCC and macro-F1, ranks for Spearman. numpy and
scipy are imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

RESAMPLES = 1999  # bootstrap resamples, and random swaps when they are too many to enumerate
SEED = 0  # every comparison draws from a fresh numpy Generator seeded with this
CONFIDENCE = 0.95
MIN_SEEDS = 3  # seeds per side for the seed-level test
TIE_SHARE = 0.5  # prompt scoring with more than this share of tied examples is a tie artefact
FINETUNED = "fine-tuned"  # the mode name of fine-tuned predictions; prompt modes are "0-shot", "5-shot", ...
_BATCH_ELEMENTS = 1 << 22  # gathered values per resampling batch: bounds memory, not results


@dataclass(frozen=True)
class Comparison:
    """Model ``a`` against model ``b`` on one task (or pooled group) in one mode."""

    task: str  # a task, or the group named in ``pooled``
    mode: str  # "fine-tuned", "0-shot", "5-shot", ...
    a: str
    b: str
    examples: int  # paired evaluation examples (per seed)
    seeds: tuple[int, int]  # seeds per side that entered the test: (1, 1) for example-level
    score_a: float  # the task score (mean of its metrics); seed-level: the mean over seeds
    score_b: float
    difference: float  # score_a - score_b
    low: float | None  # 95% interval of the difference; None where undefined
    high: float | None
    p_value: float | None  # two-sided, of "no difference"; None where undefined
    method: str  # e.g. "example-level only: paired bootstrap + permutation over examples"
    meaningful: bool = True  # False: do not present as significant (``note`` says why)
    note: str | None = None
    pooled: tuple[str, ...] = ()  # tasks pooled into this comparison (a group's accuracy); () for one task

    @property
    def seed_level(self) -> bool:
        return self.seeds[0] > 1


# --------------------------------------------------------------------------- metrics over arrays
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

        from .metrics import squad_exact_match, squad_f1  # the official rules live there

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
    from .errors import UsageError

    raise UsageError(f"unknown metric {name!r}: mkeval.significance knows accuracy, f1, macro_f1, "
                     "matthews_corrcoef, pearson, spearman, squad, record and multirc")


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


# --------------------------------------------------------------------------- the tests
@dataclass(frozen=True)
class Outcome:
    """What a test gives: scores of both sides, their difference, the interval and the p-value."""

    score_a: float
    score_b: float
    difference: float
    low: float | None
    high: float | None
    p_value: float | None


def _batch(units: int) -> int:
    """Resamples per batch so that one batch holds about ``_BATCH_ELEMENTS`` indices."""
    return max(1, _BATCH_ELEMENTS // max(units, 1))


def paired_examples(records_a: Sequence[dict[str, Any]], records_b: Sequence[dict[str, Any]], names: Sequence[str],
                    labels: Sequence[Any] = (), positive: Any = None, *, resamples: int = RESAMPLES,
                    seed: int = SEED) -> Outcome:
    """Example-level comparison of two prediction lists aligned by position (the same examples).

    Interval: ``scipy.stats.bootstrap`` (paired, percentile) of score(a) - score(b) over examples
    (MultiRC: questions). p: ``scipy.stats.permutation_test`` swapping a's and b's predictions
    within examples (exact when there are few enough swaps to enumerate; for plain accuracy always
    exact, as McNemar's exact test, which is that permutation test's closed form).
    """
    if len(records_a) != len(records_b):
        raise ValueError(f"paired records differ in number: {len(records_a)} and {len(records_b)}")
    scorer = _Scorer(names, labels, positive, [records_a, records_b])
    units = scorer.all_units()
    score_a, score_b = float(scorer.score(units, scorer.sides[0])), float(scorer.score(units, scorer.sides[1]))
    if len(units) < 2:
        return Outcome(score_a, score_b, score_a - score_b, None, None, None)

    low, high = _bootstrap_interval(scorer, resamples, seed)
    return Outcome(score_a, score_b, score_a - score_b, low, high, _swap_p_value(scorer, resamples, seed))


def _bootstrap_interval(scorer: _Scorer, resamples: int, seed: int) -> tuple[float, float]:
    import numpy as np
    from scipy import stats

    side_a, side_b = scorer.sides

    # One sample of unit indices, each standing for the pair (a's and b's features of that unit):
    # resampling it draws whole pairs, which is what bootstrap(paired=True) does inside.
    def difference(units: np.ndarray, axis: int = -1) -> np.ndarray:
        return scorer.score(units, side_a) - scorer.score(units, side_b)

    if all(m.linear for m in scorer.metrics) and not scorer.units.grouped:
        gaps = _Table(side_a.rows - side_b.rows)  # a score linear in the sums: one gather instead of two

        def difference(units: np.ndarray, axis: int = -1) -> np.ndarray:  # noqa: F811
            return scorer.score(units, gaps)

    boot = stats.bootstrap((scorer.all_units(),), difference, vectorized=True, n_resamples=resamples,
                           batch=_batch(scorer.units.count), method="percentile", confidence_level=CONFIDENCE,
                           rng=np.random.default_rng(seed))
    return float(boot.confidence_interval.low), float(boot.confidence_interval.high)


def _swap_p_value(scorer: _Scorer, resamples: int, seed: int) -> float:
    """Two-sided p of the difference under swapping a's and b's predictions within units."""
    import numpy as np
    from scipy import stats

    rows_a, rows_b = scorer.sides[0].rows, scorer.sides[1].rows
    if [type(m) for m in scorer.metrics] == [_Accuracy] and not scorer.units.grouped:
        # Swapping an example where one model is right and the other wrong moves the difference by
        # +-1/n, the others not at all: the swap distribution is binomial over those discordant
        # examples, and its exact two-sided p is McNemar's exact test.
        wins = int((rows_a[:, 0] > rows_b[:, 0]).sum())
        discordant = wins + int((rows_a[:, 0] < rows_b[:, 0]).sum())
        return 1.0 if discordant == 0 else float(stats.binomtest(wins, discordant, 0.5).pvalue)
    fixed = None
    keep = scorer.all_units()
    if scorer.summed_only:
        # A unit where both sides have the same features is unchanged by a swap: it is held fixed,
        # and only the others are permuted (the same distribution, fewer values to shuffle).
        same = (rows_a == rows_b).all(1)
        fixed = (rows_a[same].sum(0), int(same.sum()))
        keep = np.flatnonzero(~same)
    if len(keep) == 0:  # identical features everywhere: every swap gives the observed difference
        return 1.0
    table = _Table(np.vstack([rows_a[keep], rows_b[keep]]))  # a's rows, then b's: a swap exchanges i and i + m

    def swapped(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return scorer.score(x, table, fixed) - scorer.score(y, table, fixed)

    m = len(keep)
    perm = stats.permutation_test((np.arange(m), np.arange(m) + m), swapped, permutation_type="samples",
                                  vectorized=True, n_resamples=resamples, batch=_batch(m), alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    return float(perm.pvalue)


def seed_scores_test(scores_a: Mapping[int, float], scores_b: Mapping[int, float]) -> tuple[Outcome, bool]:
    """Seed-level comparison of task scores per seed: (outcome, paired).

    Paired t-test (``scipy.stats.ttest_rel``, seeds matched) when both sides have the same seeds,
    else Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``); the interval is the test's
    95% t-interval of the mean difference.
    """
    import numpy as np
    from scipy import stats

    paired = set(scores_a) == set(scores_b)
    order = sorted(scores_a)
    xa = np.array([scores_a[s] for s in order], float)
    xb = np.array([scores_b[s] for s in (order if paired else sorted(scores_b))], float)
    mean_a, mean_b = float(xa.mean()), float(xb.mean())
    diff = mean_a - mean_b
    spread = np.ptp(xa - xb) if paired else max(np.ptp(xa), np.ptp(xb))
    if spread <= 1e-12:  # no variance to test against: the t statistic is undefined
        if diff == 0:
            return Outcome(mean_a, mean_b, 0.0, 0.0, 0.0, 1.0), paired
        return Outcome(mean_a, mean_b, diff, None, None, None), paired
    res = stats.ttest_rel(xa, xb) if paired else stats.ttest_ind(xa, xb, equal_var=False)
    ci = res.confidence_interval(CONFIDENCE)
    return Outcome(mean_a, mean_b, diff, float(ci.low), float(ci.high), float(res.pvalue)), paired


# --------------------------------------------------------------------------- constant and tie rule
def _key(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def artefacts(records: Sequence[dict[str, Any]]) -> list[str]:
    """Why ``records`` cannot show what a model learned, to follow the model's name: it gives one
    prediction for every example, or most of its prompt scores are ties (the first option wins)."""
    why = []
    if len(records) > 1 and len({_key(r["prediction"]) for r in records}) == 1:
        why.append(f"predicts {records[0]['prediction']!r} for every example")
    tied = [bool(r["tie"]) for r in records if "tie" in r]
    if tied and sum(tied) > TIE_SHARE * len(tied):
        why.append(f"has {sum(tied)} of {len(tied)} examples tied between options (the first one wins)")
    return why


def _artefact_note(label: str, per_seed: Mapping[int | None, Sequence[dict[str, Any]]]) -> list[str]:
    """``artefacts`` of one model, its seeds with the same finding named together."""
    seeds_of: dict[str, list[Any]] = {}
    for s, records in per_seed.items():
        for why in artefacts(records):
            seeds_of.setdefault(why, []).append(s)
    out = []
    for why, seeds in seeds_of.items():
        if seeds == [None]:
            out.append(f"{label} {why}")
        else:
            out.append(f"{label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}) {why}")
    return out


_ARTEFACT_TAIL = " (so the scores reflect the labels, not learning)"


# --------------------------------------------------------------------------- reading a directory
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s): left out of the comparisons", path, exc)
        return None


def _records(path: Path) -> dict[str, dict[str, Any]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["id"]): r for r in json.loads("[" + ",".join(lines) + "]")}  # one parse: 3x faster than per line


@dataclass
class _Mode:
    """One unit's predictions in one mode of one task (read on demand)."""

    result: dict[str, Any]
    path: Path
    _records: dict[str, dict[str, Any]] | None = None

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            self._records = _records(self.path)
        return self._records


def _modes(directory: Path, unit: str) -> dict[tuple[str, str], _Mode]:
    """(task, mode) -> predictions, for every mode of every task of ``unit`` whose status is ok."""
    folder = directory / "downstream" / unit
    out = {}
    for path in sorted(folder.glob("*.json")):
        result = _read_json(path)
        if not isinstance(result, dict) or result.get("status") not in ("ok", "degenerate"):
            continue
        task = str(result.get("task") or path.stem)
        modes = [(FINETUNED, result.get("finetune"))] + list((result.get("prompt") or {}).items())
        for mode, section in modes:
            if isinstance(section, dict) and section.get("status") == "ok" and section.get("predictions_file"):
                out[(task, mode)] = _Mode(result, folder / section["predictions_file"])
    return out


def _seed(directory: Path, unit: str, position: int) -> int:
    summary = _read_json(directory / f"{unit}_downstream.json") if (directory / f"{unit}_downstream.json").exists() \
        else None
    if isinstance(summary, dict) and isinstance(summary.get("seed"), int):
        return summary["seed"]
    for path in sorted((directory / "downstream" / unit).glob("*.json"))[:1]:
        result = _read_json(path)
        if isinstance(result, dict) and isinstance(result.get("seed"), int):
            return result["seed"]
    return position


def _label(directory: Path, units: Sequence[str]) -> str:
    if len(units) == 1:
        return units[0]
    names = set()
    for unit in units:
        path = directory / f"{unit}_downstream.json"
        summary = _read_json(path) if path.exists() else None
        names.add(summary.get("model_name") if isinstance(summary, dict) else None)
    return names.pop() if len(names) == 1 and None not in names else "+".join(units)


def _mode_order(mode: str) -> tuple[int, str]:
    if mode == FINETUNED:
        return -1, mode
    head = mode.split("-")[0]
    return (int(head), mode) if head.isdigit() else (1 << 30, mode)


def _pools(result: dict[str, Any], pool: Sequence[str]) -> list[str]:
    """The caller's groups this task is pooled into: it is in the group and scored by plain accuracy."""
    if list(result.get("metric_names") or []) != ["accuracy"]:
        return []
    groups = set(result.get("groups") or [])
    return [g for g in pool if g in groups]


@dataclass
class _Cell:
    """What one comparison reads: per side, per seed, the (task, mode) predictions it pools."""

    task: str
    mode: str
    names: list[str]
    labels: tuple[Any, ...]
    positive: Any
    sides: tuple[dict[int, list[_Mode]], dict[int, list[_Mode]]]
    pooled: bool = False


def compare_models(directory: str | Path, units_a: Sequence[str], units_b: Sequence[str], *,
                   pool: Sequence[str] = (), labels: tuple[str, str] | None = None,
                   resamples: int = RESAMPLES, seed: int = SEED) -> list[Comparison]:
    """Model A (``units_a``: one unit per seed) against model B on every task and mode both have.

    A task in one of the groups named in ``pool`` (its result's ``groups``) that is scored by plain
    accuracy is compared only inside that group, whose tasks are pooled per mode (micro accuracy
    over all their examples). With ``MIN_SEEDS`` or more seeds on both sides the test is over
    seeds; otherwise over the examples of one seed each (the lowest seed both have, else each
    side's lowest). Comparisons come per task in name order, then per pooled group in ``pool``'s
    order; modes: fine-tuned, then by shots.
    """
    directory = Path(directory)
    if not units_a or not units_b:
        raise ValueError("compare_models needs at least one unit per model")
    label_a, label_b = labels or (_label(directory, units_a), _label(directory, units_b))
    sides = []
    for units in (units_a, units_b):
        seeded: dict[int, dict[tuple[str, str], _Mode]] = {}
        for i, unit in enumerate(units):
            s = _seed(directory, unit, i)
            if s in seeded:
                raise ValueError(f"units {', '.join(units)} hold seed {s} twice: pass one unit per seed of a model")
            seeded[s] = _modes(directory, unit)
        sides.append(seeded)
    cells: dict[tuple[str, str], _Cell] = {}
    keys = sorted({k for side in sides for modes in side.values() for k in modes},
                  key=lambda k: (k[0], _mode_order(k[1])))
    pooled: dict[tuple[str, str], _Cell] = {}
    for task, mode in keys:
        per_side = tuple({s: [modes[(task, mode)]] for s, modes in side.items() if (task, mode) in modes}
                         for side in sides)
        if not per_side[0] or not per_side[1]:
            continue
        result = next(iter(per_side[0].values()))[0].result
        groups = _pools(result, pool)
        if not groups:
            cells[(task, mode)] = _Cell(task, mode, list(result.get("metric_names") or []),
                                        tuple(result.get("labels") or ()), result.get("positive_label"), per_side)
        for g in groups:
            cell = pooled.setdefault((g, mode), _Cell(g, mode, ["accuracy"], (), None, ({}, {}), pooled=True))
            for side, got in zip(cell.sides, per_side):
                for s, found in got.items():
                    side.setdefault(s, []).extend(found)
    ordered = list(cells.values()) + sorted(pooled.values(), key=lambda c: (list(pool).index(c.task),
                                                                              _mode_order(c.mode)))
    out = []
    for cell in ordered:
        try:
            out.append(_compare(cell, label_a, label_b, resamples, seed))
        except (ValueError, KeyError, TypeError) as exc:  # files from an older mkeval, or hand-edited
            log.warning("no comparison for %s (%s): %s", cell.task, cell.mode, exc)
    return out


def _pooled_records(found: list[_Mode], keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
    by_task = {mode.result.get("task"): mode.records for mode in found}
    return [by_task[t][i] for t, i in keys]


def _common_keys(units: Sequence[list[_Mode]]) -> list[tuple[str, str]]:
    """(task, id) of the examples every one of ``units`` has, in the first unit's order."""
    common: dict[str, set[str]] = {}
    for n, found in enumerate(units):
        mine = {m.result.get("task"): m.records for m in found}
        if n == 0:
            common = {t: set(records) for t, records in mine.items()}
        else:  # a pooled task that some unit lacks is left out of the pool for everyone
            common = {t: ids & mine[t].keys() for t, ids in common.items() if t in mine}
    return [(m.result.get("task"), i) for m in units[0] for i in m.records if i in common.get(m.result.get("task"), ())]


def _compare(cell: _Cell, label_a: str, label_b: str, resamples: int, seed: int) -> Comparison:
    side_a, side_b = cell.sides
    if len(side_a) >= MIN_SEEDS and len(side_b) >= MIN_SEEDS:
        units = [side_a[s] for s in sorted(side_a)] + [side_b[s] for s in sorted(side_b)]
        keys = _common_keys(units)
        records = [_pooled_records(found, keys) for found in units]
        scorer = _Scorer(cell.names, cell.labels, cell.positive, records)
        per_unit = [float(scorer.score(scorer.all_units(), table)) for table in scorer.sides]
        scores_a = dict(zip(sorted(side_a), per_unit[:len(side_a)]))
        scores_b = dict(zip(sorted(side_b), per_unit[len(side_a):]))
        outcome, paired = seed_scores_test(scores_a, scores_b)
        test = (f"paired t-test over {len(side_a)} seeds" if paired else
                f"Welch t-test over {len(side_a)} vs {len(side_b)} seeds")
        method = f"seed-level: {test} (task score per seed)"
        notes = _artefact_note(label_a, dict(zip(sorted(side_a), records[:len(side_a)]))) + \
            _artefact_note(label_b, dict(zip(sorted(side_b), records[len(side_a):])))
        note = "; ".join(notes) + _ARTEFACT_TAIL if notes else None
        if note is None and outcome.p_value is None:
            note = "every seed gives the same difference: there is no seed variance to test against"
        seeds = (len(side_a), len(side_b))
    else:
        common = sorted(set(side_a) & set(side_b))
        sa, sb = (common[0], common[0]) if common else (min(side_a), min(side_b))
        keys = _common_keys([side_a[sa], side_b[sb]])
        recs_a, recs_b = _pooled_records(side_a[sa], keys), _pooled_records(side_b[sb], keys)
        outcome = paired_examples(recs_a, recs_b, cell.names, cell.labels, cell.positive, resamples=resamples,
                                  seed=seed)
        unit = "questions" if recs_a and all("group" in r for r in recs_a) else "examples"
        which = "" if (len(side_a), len(side_b)) == (1, 1) else \
            f" (seed {sa} vs {sb}; {len(side_a)} vs {len(side_b)} seeds, fewer than {MIN_SEEDS})"
        test = "exact permutation (McNemar)" if cell.names == ["accuracy"] and unit == "examples" else "permutation"
        method = f"example-level only{which}: paired bootstrap + {test} over {unit}"
        notes = _artefact_note(label_a, {None: recs_a}) + _artefact_note(label_b, {None: recs_b})
        note = "; ".join(notes) + _ARTEFACT_TAIL if notes else None
        if note is None and len(keys) < 2:
            note = f"{len(keys)} paired example: no interval or test"
        seeds = (1, 1)
    members = tuple(sorted({t for t, _ in keys})) if cell.pooled else ()
    return Comparison(cell.task, cell.mode, label_a, label_b, len(keys), seeds, outcome.score_a, outcome.score_b,
                      outcome.difference, outcome.low, outcome.high, outcome.p_value, method, note is None, note,
                      members)
