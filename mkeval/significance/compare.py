"""``compare_models``: model A against model B on every task and mode both have, at seed level
with ``MIN_SEEDS`` or more seeds each, else over the examples of one seed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .artefacts import _ARTEFACT_TAIL, _artefact_note
from .predictions import FINETUNED, _label, _Mode, _modes, _seed
from .scorer import _Scorer
from .resampling import RESAMPLES, SEED, paired_examples, seed_scores_test

log = logging.getLogger(__name__)

MIN_SEEDS = 3  # seeds per side for the seed-level test


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
