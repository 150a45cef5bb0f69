"""The tests: example-level (paired bootstrap interval, permutation or McNemar p) and seed-level
(paired or Welch t-test over the seeds' task scores). scipy and numpy are imported inside functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .metrics import _Accuracy
from .scorer import _Scorer, _Table

RESAMPLES = 1999  # bootstrap resamples, and random swaps when they are too many to enumerate
SEED = 0  # every comparison draws from a fresh numpy Generator seeded with this
CONFIDENCE = 0.95
_BATCH_ELEMENTS = 1 << 22  # gathered values per resampling batch: bounds memory, not results


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
