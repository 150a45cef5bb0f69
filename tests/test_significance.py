"""The paired bootstrap against hand computations and the normal approximation."""

import json

import numpy as np
import pytest

from mkeval.metrics import MetricContext
from mkeval.significance import compare_units, paired_bootstrap


def _records(hits):
    return [{"id": str(i), "prediction": "1" if h else "0", "reference": "1"} for i, h in enumerate(hits)]


def test_identical_predictions_differ_by_nothing():
    recs = _records([1, 0, 1, 1, 0] * 10)
    a, b, diff, low, high, p = paired_bootstrap(recs, recs, ["accuracy"], MetricContext())
    assert (a, b, diff, low, high, p) == (0.6, 0.6, 0.0, 0.0, 0.0, 1.0)


def test_interval_matches_the_normal_approximation_for_accuracy():
    rng = np.random.default_rng(1)
    hits_a = rng.random(400) < 0.7
    hits_b = rng.random(400) < 0.6
    a, b, diff, low, high, p = paired_bootstrap(_records(hits_a), _records(hits_b), ["accuracy"], MetricContext(),
                                                resamples=4000)
    d = hits_a.astype(float) - hits_b.astype(float)
    assert diff == pytest.approx(d.mean())  # the observed difference, by hand
    se = d.std() / np.sqrt(len(d))  # the bootstrap's standard error of a mean, in closed form
    assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.01)
    assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.01)
    assert p < 0.05 and low > 0


def test_non_accuracy_metrics_are_recomputed_on_each_resample():
    refs = ["1", "0"] * 20
    good = [{"id": str(i), "prediction": r, "reference": r} for i, r in enumerate(refs)]
    bad = [{"id": str(i), "prediction": "1", "reference": r} for i, r in enumerate(refs)]
    a, b, diff, low, high, p = paired_bootstrap(good, bad, ["matthews_corrcoef"], MetricContext(), resamples=200)
    assert (a, b) == (1.0, 0.0) and diff == 1.0 and p < 0.01


def test_compare_units_pairs_by_id_and_pools_mmlu(tmp_path):
    def write(unit, task, hits, groups=("glue",)):
        folder = tmp_path / "downstream" / unit
        folder.mkdir(parents=True, exist_ok=True)
        recs = _records(hits)[::-1]  # a different order: pairing is by id
        (folder / f"{task}.predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (folder / f"{task}.json").write_text(json.dumps({
            "task": task, "status": "ok", "groups": list(groups), "metric_names": ["accuracy"], "labels": ["0", "1"],
            "finetune": {"status": "ok", "metrics": {"accuracy": float(np.mean(hits))},
                         "predictions_file": f"{task}.predictions.jsonl"}}))

    write("x", "rte", [1] * 30)
    write("y", "rte", [1] * 15 + [0] * 15)
    write("x", "mmlu_a", [1, 0] * 5, ("mmlu",))
    write("y", "mmlu_a", [0, 0] * 5, ("mmlu",))
    write("x", "mmlu_b", [1] * 10, ("mmlu",))
    write("y", "mmlu_b", [1] * 10, ("mmlu",))
    out = {c.task: c for c in compare_units(tmp_path, "x", "y")}
    assert out["rte"].difference == pytest.approx(0.5) and out["rte"].examples == 30
    pooled = out["mmlu (all subjects)"]
    assert pooled.examples == 20 and pooled.score_a == pytest.approx(15 / 20) and pooled.score_b == pytest.approx(0.5)
