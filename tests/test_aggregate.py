"""Seed statistics: mean, sample std, n and the Student-t interval, against scipy."""

import math
import statistics

import pytest
from scipy import stats

from mkeval.results.aggregate import seed_stats, t_critical


def test_the_t_table_is_scipys():
    for df in range(1, 45):
        assert t_critical(df) == pytest.approx(float(stats.t.ppf(0.975, df)), abs=1e-6)


def test_seed_stats_against_scipy():
    values = [31.2, 29.8, 30.5, 33.1]
    s = seed_stats(values, [0, 1, 2, 3])
    interval = stats.t.interval(0.95, df=3, loc=statistics.fmean(values), scale=stats.sem(values))
    assert (s.mean, s.std, s.n) == (pytest.approx(statistics.fmean(values)), pytest.approx(statistics.stdev(values)), 4)
    assert (s.low, s.high) == (pytest.approx(interval[0]), pytest.approx(interval[1]))
    assert s.text() == f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} (n=4)"


def test_one_seed_has_no_spread_and_non_finite_values_are_left_out():
    one = seed_stats([12.5], [7])
    assert (one.mean, one.std, one.low, one.n, one.seeds) == (12.5, None, None, 1, (7,))
    mixed = seed_stats([1.0, math.inf, None, 3.0], [0, 1, 2, 3])
    assert (mixed.n, mixed.mean, mixed.seeds) == (2, 2.0, (0, 3))
    assert seed_stats([], []).mean is None
