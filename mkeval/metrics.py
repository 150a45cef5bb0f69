"""Official downstream-task metrics from per-example prediction records.

Metrics are scoring rules any task spec may name (``metrics: [squad]`` suits any extractive QA
task), so they live in the core; what belongs to one benchmark (its readers, its averages)
lives in the tasks plugin.

Standard metrics are scikit-learn's and scipy's. Written by hand, because no maintained library
ships them as the official scripts define them: SQuAD v1.1 answer normalisation and token F1
(``evaluate-v1.1.py``), MultiRC F1a and per-question EM, and ReCoRD's max over gold answers.
"""

from __future__ import annotations
import logging
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Sequence

import numpy as np

from .errors import UsageError, did_you_mean

log = logging.getLogger(__name__)

Record = dict  # {"id": str, "prediction": ..., "reference": ..., optionally "group": str}


@dataclass(frozen=True)
class MetricContext:
    labels: tuple[str, ...] = ()  # the task's label set, for macro_f1
    positive: str | None = None  # positive label for f1 / f1a


# --- classification and regression -------------------------------------------------------------

def accuracy(references: Sequence, predictions: Sequence) -> float:
    from sklearn import metrics as skm  # imported when used: scipy and scikit-learn take seconds to import

    return float(skm.accuracy_score(references, predictions))


def f1(references: Sequence, predictions: Sequence, positive) -> float:
    from sklearn import metrics as skm

    return float(skm.f1_score(references, predictions, pos_label=positive, average="binary", zero_division=0.0))


def macro_f1(references: Sequence, predictions: Sequence, labels: Sequence) -> float:
    from sklearn import metrics as skm

    return float(skm.f1_score(references, predictions, labels=list(labels), average="macro", zero_division=0.0))


def matthews_corrcoef(references: Sequence, predictions: Sequence) -> float:
    from sklearn import metrics as skm

    return float(skm.matthews_corrcoef(references, predictions))


def _correlation(fn, name: str, references: Sequence[float], predictions: Sequence[float]) -> float:
    x, y = np.asarray(references, dtype=float), np.asarray(predictions, dtype=float)
    # The correlation is undefined (scipy gives nan); a constant predictor has learned nothing, so 0.
    if x.size and (np.ptp(x) == 0 or np.ptp(y) == 0):
        log.warning("%s: constant input, scoring 0.0 instead of nan", name)
        return 0.0
    return float(fn(x, y).statistic)


def pearson(references: Sequence[float], predictions: Sequence[float]) -> float:
    from scipy import stats

    return _correlation(stats.pearsonr, "pearson", references, predictions)


def spearman(references: Sequence[float], predictions: Sequence[float]) -> float:
    from scipy import stats

    return _correlation(stats.spearmanr, "spearman", references, predictions)


# --- SQuAD v1.1 / ReCoRD -----------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation, in the official order: lower, punctuation, articles, whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: Sequence[str] | str) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)  # a bare string would be read as characters
    if not golds:
        raise ValueError("no gold answers to score against")
    return golds


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in _golds(golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    return max(_token_f1(prediction, g) for g in _golds(golds))


def squad_scores(records: Sequence[Record]) -> dict[str, float]:
    """Mean EM and F1 as fractions in [0, 1] (the official script reports them x100)."""
    return {"em": fmean(squad_exact_match(r["prediction"], r["reference"]) for r in records),
            "f1": fmean(squad_f1(r["prediction"], r["reference"]) for r in records)}


def record_scores(records: Sequence[Record]) -> dict[str, float]:
    """ReCoRD: the official script scores the max over gold entities with SQuAD's EM and F1."""
    return squad_scores(records)


# --- MultiRC -----------------------------------------------------------------------------------

def multirc_scores(records: Sequence[Record], positive: str = "1") -> dict[str, float]:
    """F1a: binary F1 over every answer option; EM: fraction of questions with every option right."""
    refs, preds = [str(r["reference"]) for r in records], [str(r["prediction"]) for r in records]
    right: dict[str, bool] = defaultdict(lambda: True)
    for r, ref, pred in zip(records, refs, preds):
        right[r["group"]] &= ref == pred
    return {"f1a": f1(refs, preds, positive), "em": fmean(right.values())}


# --- registry ----------------------------------------------------------------------------------

def _pairs(records: Sequence[Record], cast=None) -> tuple[list, list]:
    refs, preds = [r["reference"] for r in records], [r["prediction"] for r in records]
    return ([cast(x) for x in refs], [cast(x) for x in preds]) if cast else (refs, preds)


def _f1(records: list[Record], context: MetricContext) -> dict[str, float]:
    if context.positive is None:
        raise ValueError("metric 'f1' needs the task's positive label (MetricContext.positive)")
    return {"f1": f1(*_pairs(records), context.positive)}


def _multirc(records: list[Record], context: MetricContext) -> dict[str, float]:
    return multirc_scores(records, "1" if context.positive is None else context.positive)


METRICS: dict[str, Callable[[list[Record], MetricContext], dict[str, float]]] = {
    "accuracy": lambda records, context: {"accuracy": accuracy(*_pairs(records))},
    "f1": _f1,
    "macro_f1": lambda records, context: {"macro_f1": macro_f1(*_pairs(records), context.labels)},
    "matthews_corrcoef": lambda records, context: {"matthews_corrcoef": matthews_corrcoef(*_pairs(records))},
    "pearson": lambda records, context: {"pearson": pearson(*_pairs(records, float))},
    "spearman": lambda records, context: {"spearman": spearman(*_pairs(records, float))},
    "squad": lambda records, context: squad_scores(records),
    "multirc": _multirc,
    "record": lambda records, context: record_scores(records),
}


def compute_metrics(names: Sequence[str], records: list[Record], context: MetricContext) -> dict[str, float]:
    """Every named metric over ``records``, merged into one dict of plain floats."""
    for name in names:
        if name not in METRICS:
            hint = did_you_mean(name, list(METRICS)) or "."
            raise UsageError(f"unknown metric {name!r}{hint} Known metrics: {', '.join(METRICS)}.")
    if not records:
        raise ValueError(f"no prediction records to compute {', '.join(names)} from")
    out: dict[str, float] = {}
    for name in names:
        for key, value in METRICS[name](records, context).items():
            if key in out:
                raise ValueError(f"metric {name!r} would overwrite the value {key!r} of an earlier metric")
            out[key] = float(value)
    return out


# --- benchmark aggregation ---------------------------------------------------------------------

def task_score(metrics: dict[str, float]) -> float:
    """A task's leaderboard score: the unweighted mean of its metrics (e.g. MRPC accuracy and F1)."""
    if not metrics:
        raise ValueError("a task with no metric values has no score")
    return fmean(metrics.values())
