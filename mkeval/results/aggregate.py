"""Summaries across seeds and datasets that never mix what should not be mixed.

A summary groups results by everything except the dimension it summarises:

- over seeds: the same model, dataset, sequence length, training precision and evaluation
  precision (and, downstream, the same task, mode and pretraining), giving mean, sample standard
  deviation, n and a 95% Student-t interval;
- over datasets: the multi-dataset mean only across datasets that have cells at one precision,
  one sequence length and the same set of seeds.

No summary averages across precisions or sequence lengths. Imports no torch; scipy only when
an interval is computed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedStats:
    """A number over seeds: ``mean``, sample ``std`` (ddof = 1), ``n`` and a 95% t-interval.

    With one seed, ``std`` and the interval are None: the spread over training seeds is unknown.
    """

    mean: float | None
    std: float | None
    n: int
    low: float | None
    high: float | None
    values: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": None if self.low is None else
                [self.low, self.high], "values": list(self.values), "seeds": list(self.seeds)}

    def text(self, digits: int = 3) -> str:
        """``12.345 ± 0.123 (n=3)``; one seed: ``12.345 (n=1)``; no finite value: empty."""
        if self.mean is None:
            return ""
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


def seed_stats(values: Iterable[float | None], seeds: Iterable[int] = ()) -> SeedStats:
    """Mean, sample std and the 95% t-interval of the mean of per-seed values (non-finite ones dropped)."""
    values = list(values)
    pairs = [(v, s) for v, s in zip(values, list(seeds) or [None] * len(values))
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    xs = tuple(float(v) for v, _ in pairs)
    kept = tuple(s for _, s in pairs if s is not None)
    n = len(xs)
    if n == 0:
        return SeedStats(None, None, 0, None, None, (), kept)
    mean = statistics.fmean(xs)
    if n < 2:
        return SeedStats(mean, None, 1, None, None, xs, kept)
    std = statistics.stdev(xs)
    half = t_critical(n - 1) * std / math.sqrt(n)
    return SeedStats(mean, std, n, mean - half, mean + half, xs, kept)


# Student-t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, to 6 decimals; the test
# suite checks them against scipy): importing scipy costs a second, more than a report may take.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.13145, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.04523, 2.042272)


def t_critical(df: int) -> float:
    """The two-sided 95% Student-t critical value for ``df`` degrees of freedom."""
    if CONFIDENCE == 0.95 and 1 <= df <= len(_T975):
        return _T975[df - 1]
    from scipy import stats  # more seeds than the table: rare, and worth the import

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=df))


def group_by(items: Iterable[Any], key: Callable[[Any], tuple]) -> dict[tuple, list[Any]]:
    out: dict[tuple, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


# --------------------------------------------------------------------------- language modelling
LM_NUMBERS = ("test_perplexity", "best_perplexity", "test_word_perplexity", "test_bits_per_byte", "test_accuracy",
              "perplexity_gap", "relative_perplexity_delta")


def lm_group_key(r: Any) -> tuple:
    """What a language-modelling cell is, seed aside: model, dataset, length, trained at, evaluated at."""
    return (r.model_name, r.dataset, r.seq_len, r.trained_precision or r.precision, r.precision)


@dataclass
class LMSummary:
    """One (model, dataset, seq_len, trained at, evaluated at) over its seeds."""

    model_name: str
    dataset: str
    seq_len: int
    trained_at: str
    evaluated_at: str
    numbers: dict[str, SeedStats]
    cells: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "dataset": self.dataset, "seq_len": self.seq_len,
                "trained_at": self.trained_at, "evaluated_at": self.evaluated_at,
                **{k: v.to_json() for k, v in self.numbers.items()}}


def lm_summaries(results: Iterable[Any]) -> list[LMSummary]:
    """Cell results summarised over seeds, one per (model, dataset, seq_len, trained at, evaluated at)."""
    out = []
    for key, cells in group_by(results, lm_group_key).items():
        cells = sorted(cells, key=lambda r: r.seed)
        numbers = {name: seed_stats([getattr(r, name) for r in cells], [r.seed for r in cells]) for name in LM_NUMBERS}
        out.append(LMSummary(*key, numbers, cells))
    return out


def multi_dataset_summary(model: str, results: list[Any], failures: dict[str, str],
                          failed_cells: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``{model}_multi_dataset.json``: per (trained at, evaluated at, seq_len), each dataset's test
    perplexity over seeds and the mean across datasets.

    The cross-dataset ``mean_perplexity`` (of the per-dataset seed means) and ``std_perplexity``
    (population, ddof = 0, across datasets) are given only when the group is complete: every
    dataset has a finished cell for the same set of seeds and no cell of the group failed. The
    top-level numbers are those of the only group, or null when the run has several (precisions
    or lengths are never averaged together; see ``groups``).
    """
    failed_cells = failed_cells or []
    groups = []
    by_group = group_by(results, lambda r: (r.trained_precision or r.precision, r.precision, r.seq_len))
    for (trained, evaluated, seq_len), cells in sorted(by_group.items()):
        per_dataset: dict[str, Any] = {}
        for dataset, mine in group_by(cells, lambda r: (r.dataset,)).items():
            mine = sorted(mine, key=lambda r: r.seed)
            per_dataset[dataset[0]] = {
                "perplexity": seed_stats([r.test_perplexity for r in mine], [r.seed for r in mine]).to_json(),
                "seeds": [r.seed for r in mine],
                "cells": [{"seed": r.seed, "test_perplexity": r.test_perplexity} for r in mine]}
        seed_sets = {tuple(d["seeds"]) for d in per_dataset.values()}
        failed_here = [f for f in failed_cells if (f.get("precision"), f.get("seq_len")) == (evaluated, seq_len)]
        complete = bool(per_dataset) and len(seed_sets) == 1 and not failed_here
        means = [d["perplexity"]["mean"] for d in per_dataset.values()]
        complete = complete and all(m is not None for m in means)
        groups.append({
            "trained_at": trained, "evaluated_at": evaluated, "seq_len": seq_len,
            "seeds": sorted(seed_sets.pop()) if len(seed_sets) == 1 else None,
            "datasets": per_dataset,
            "mean_perplexity": statistics.fmean(means) if complete else None,
            "std_perplexity": statistics.pstdev(means) if complete else None,
            "num_datasets": len(per_dataset), "complete": complete, "failed_cells": len(failed_here),
        })
    only = groups[0] if len(groups) == 1 else None
    return {
        "model_name": model,
        "datasets": only["datasets"] if only else None,
        "mean_perplexity": only["mean_perplexity"] if only else None,
        "std_perplexity": only["std_perplexity"] if only else None,
        "num_datasets": only["num_datasets"] if only else None,
        "complete": only["complete"] if only else None,
        "failed_cells": len(failed_cells),
        "failed": failures,
        "groups": groups,
    }
