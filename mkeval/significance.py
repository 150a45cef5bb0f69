"""Is one model's downstream score really higher? A paired bootstrap over evaluation examples.

Two units evaluated on the same task saw the same examples (same data, same ``--limit``), so
their predictions pair up by ``id``. Resampling the examples with replacement and recomputing
the task's metric for both models on each resample gives the distribution of the difference
(Koehn 2004; Berg-Kirkpatrick et al. 2012). Reported: the observed difference of the task
score, a 95% percentile interval, and a two-sided p-value (twice the smaller tail of the
resampled differences at zero). No torch import: it reads predictions files only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import MetricContext, compute_metrics, task_score

log = logging.getLogger(__name__)
RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Comparison:
    task: str
    mode: str
    a: str
    b: str
    examples: int
    score_a: float
    score_b: float
    difference: float  # score_a - score_b
    low: float  # 95% interval of the difference
    high: float
    p_value: float


def _records(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)}


def paired_bootstrap(a: list[dict[str, Any]], b: list[dict[str, Any]], metrics: list[str], context: MetricContext,
                     resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float, float, float, float]:
    """(score a, score b, difference, low, high, p) for records paired by position."""
    score = lambda recs: task_score(compute_metrics(metrics, recs, context))  # noqa: E731
    observed_a, observed_b = score(a), score(b)
    rng = np.random.default_rng(seed)
    n = len(a)
    if metrics == ["accuracy"]:  # vectorised: the mean of per-example hits
        hits_a = np.array([r["prediction"] == r["reference"] for r in a], float)
        hits_b = np.array([r["prediction"] == r["reference"] for r in b], float)
        idx = rng.integers(0, n, size=(resamples, n))
        diffs = hits_a[idx].mean(1) - hits_b[idx].mean(1)
    else:
        diffs = np.empty(resamples)
        for i in range(resamples):
            idx = rng.integers(0, n, size=n)
            diffs[i] = score([a[j] for j in idx]) - score([b[j] for j in idx])
    low, high = np.percentile(diffs, [2.5, 97.5])
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return observed_a, observed_b, observed_a - observed_b, float(low), float(high), float(p)


def compare_units(directory: Path, a: str, b: str) -> list[Comparison]:
    """Every task both units have predictions for, per mode; MMLU's subjects pooled (micro accuracy)."""
    out = []
    pooled: dict[str, tuple[list, list]] = {}
    folder_a, folder_b = directory / "downstream" / a, directory / "downstream" / b
    for result_path in sorted(folder_a.glob("*.json")):
        other = folder_b / result_path.name
        if not other.exists():
            continue
        ra = json.loads(result_path.read_text(encoding="utf-8"))
        rb = json.loads(other.read_text(encoding="utf-8"))
        if ra.get("status") != "ok" or rb.get("status") != "ok":
            continue
        modes = [("fine-tuned", ra.get("finetune"), rb.get("finetune"))]
        modes += [(k, m, rb.get("prompt", {}).get(k)) for k, m in ra.get("prompt", {}).items()]
        for mode, ma, mb in modes:
            if not ma or not mb or ma.get("status") != "ok" or mb.get("status") != "ok":
                continue
            pa, pb = _records(folder_a / ma["predictions_file"]), _records(folder_b / mb["predictions_file"])
            ids = [i for i in pa if i in pb]
            if not ids:
                continue
            recs_a, recs_b = [pa[i] for i in ids], [pb[i] for i in ids]
            if "mmlu" in ra.get("groups", []):
                pool = pooled.setdefault(mode, ([], []))
                pool[0].extend(recs_a)
                pool[1].extend(recs_b)
                continue
            context = MetricContext(labels=tuple(ra.get("labels") or ()), positive=ra.get("positive_label"))
            try:
                stats = paired_bootstrap(recs_a, recs_b, list(ra.get("metric_names") or sorted(ma["metrics"])),
                                         context)
            except (ValueError, KeyError, TypeError) as exc:  # files from an older mkeval, or hand-edited
                log.warning("no paired comparison for %s (%s): %s", ra.get("task"), mode, exc)
                continue
            out.append(Comparison(ra["task"], mode, a, b, len(ids), *stats))
    for mode, (recs_a, recs_b) in pooled.items():
        stats = paired_bootstrap(recs_a, recs_b, ["accuracy"], MetricContext())
        out.append(Comparison("mmlu (all subjects)", mode, a, b, len(recs_a), *stats))
    return out
