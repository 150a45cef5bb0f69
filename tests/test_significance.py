"""Comparisons against independent references: scikit-learn metrics, enumerated resamples, closed forms."""

import itertools
import json
import math
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from mkeval.metrics import MetricContext, compute_metrics, task_score
from mkeval.significance import MIN_SEEDS, Comparison, compare_models, paired_examples, seed_scores_test, task_metrics
from mkeval.significance.scorer import _Scorer


def _hits(hits, positive="1"):
    return [{"id": str(i), "prediction": positive if h else "0", "reference": positive} for i, h in enumerate(hits)]


def _classification(rng, n, labels, right=0.6):
    refs = [labels[i] for i in rng.integers(0, len(labels), n)]
    preds = [r if rng.random() < right else labels[rng.integers(0, len(labels))] for r in refs]
    return [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(preds, refs))]


def _case(name, rng, n=40):
    """Records and context for one metric, drawn at random."""
    if name in ("accuracy", "f1", "matthews_corrcoef"):
        return _classification(rng, n, ["0", "1"]), MetricContext(("0", "1"), "1")
    if name in ("macro_f1", "matthews_corrcoef_3"):
        return _classification(rng, n, ["a", "b", "c"]), MetricContext(("a", "b", "c", "d"))  # "d" never occurs
    if name in ("pearson", "spearman"):
        refs = rng.integers(0, 6, n) / 5 * 5  # ties, as STS-B's 0-5 scores have
        preds = refs + rng.normal(0, 1.5, n)
        preds[:5] = preds[0]  # ties in the predictions too
        return [{"id": str(i), "prediction": float(p), "reference": float(r)} for i, (p, r) in
                enumerate(zip(preds, refs))], MetricContext()
    if name in ("squad", "record"):
        words = ["the cat", "a cat", "cat", "dog", "The Dog!", "red dog", "blue cat sat"]
        recs = [{"id": str(i), "prediction": words[rng.integers(0, len(words))],
                 "reference": [words[j] for j in rng.choice(len(words), 2, replace=False)]} for i in range(n)]
        return recs, MetricContext()
    if name == "multirc":
        recs = []
        for q in range(n // 4):
            for o in range(int(rng.integers(1, 6))):
                ref = str(rng.integers(0, 2))
                recs.append({"id": f"{q}-{o}", "group": f"q{q}", "reference": ref,
                             "prediction": ref if rng.random() < 0.7 else str(1 - int(ref))})
        return recs, MetricContext(("0", "1"), "1")
    raise AssertionError(name)


METRIC_NAMES = ["accuracy", "f1", "macro_f1", "matthews_corrcoef", "pearson", "spearman", "squad", "record", "multirc"]


# --------------------------------------------------------------------------- metrics over arrays
@pytest.mark.parametrize("case", METRIC_NAMES + ["matthews_corrcoef_3"])
@pytest.mark.parametrize("draw", range(4))
def test_array_metrics_equal_mkeval_metrics(case, draw):
    name = case.removesuffix("_3")
    records, context = _case(case, np.random.default_rng(draw))
    assert task_metrics(records, [name], context) == pytest.approx(compute_metrics([name], records, context),
                                                                     rel=1e-12, abs=1e-12)


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn, on the constant case itself
@pytest.mark.parametrize("name", ["accuracy", "f1", "macro_f1", "matthews_corrcoef", "pearson", "spearman"])
def test_array_metrics_equal_mkeval_metrics_for_constant_predictions(name):
    records, context = _case(name, np.random.default_rng(0))
    for r in records:
        r["prediction"] = records[0]["prediction"]
    assert task_metrics(records, [name], context) == pytest.approx(compute_metrics([name], records, context),
                                                                     abs=1e-12)
    for r in records:  # and a constant reference: F1 and MCC fall back to 0 as scikit-learn does
        r["reference"] = records[0]["reference"]
    assert task_metrics(records, [name], context) == pytest.approx(compute_metrics([name], records, context),
                                                                     abs=1e-12)


@pytest.mark.parametrize("names", [["accuracy", "f1"], ["matthews_corrcoef"], ["macro_f1"], ["pearson", "spearman"],
                                   ["squad"], ["multirc"]])
def test_every_resample_scores_as_mkeval_metrics(names):
    """The axis-aware scores of many resamples at once equal scoring each resample's records alone."""
    case = {"accuracy": "f1", "pearson": "spearman"}.get(names[0], names[0])
    records, context = _case(case, np.random.default_rng(7), n=30)
    scorer = _Scorer(names, context.labels, context.positive, [records])
    units = scorer.units.count
    index = np.random.default_rng(1).integers(0, units, (6, units))
    got = scorer.score(index)
    by_unit = [[r for r, u in zip(records, scorer.units.index) if u == k] for k in range(units)]
    for row, value in zip(index, got):
        resample = [dict(r, group=f"{j}") if "group" in r else r for j, k in enumerate(row) for r in by_unit[k]]
        assert value == pytest.approx(task_score(compute_metrics(names, resample, context)), rel=1e-12, abs=1e-12)


def test_importing_the_module_loads_no_numerics():
    code = "import sys, mkeval.significance; print(sorted(m for m in ('numpy', 'scipy', 'sklearn', 'torch') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- example level
def test_identical_predictions_differ_by_nothing():
    recs = _hits([1, 0, 1, 1, 0] * 10)
    o = paired_examples(recs, recs, ["accuracy"])
    assert (o.score_a, o.score_b, o.difference, o.low, o.high, o.p_value) == (0.6, 0.6, 0.0, 0.0, 0.0, 1.0)


def _multisets(n):
    """Every bootstrap resample of n items as (counts, probability): all n**n draws, grouped."""
    for combo in itertools.combinations_with_replacement(range(n), n):
        counts = Counter(combo)
        ways = math.factorial(n)
        for c in counts.values():
            ways //= math.factorial(c)
        yield counts, ways / n ** n


def test_bootstrap_interval_brackets_the_exact_percentiles():
    """Percentile interval vs the exact bootstrap distribution: all 5**5 resamples, scored by scikit-learn."""
    context = MetricContext(("0", "1"), "1")
    refs = ["1", "0", "1", "1", "0"]
    a = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip("11010", refs))]
    b = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip("10001", refs))]
    names = ["accuracy", "f1"]
    dist = []
    for counts, prob in _multisets(len(refs)):
        pick = [i for i, c in counts.items() for _ in range(c)]
        diff = task_score(compute_metrics(names, [a[i] for i in pick], context)) - \
            task_score(compute_metrics(names, [b[i] for i in pick], context))
        dist.append((diff, prob))
    dist.sort()
    values, cdf = np.array([d for d, _ in dist]), np.cumsum([p for _, p in dist])

    def quantile(q):
        return values[np.searchsorted(cdf, q)]

    o = paired_examples(a, b, names, context.labels, context.positive, resamples=9999)
    assert quantile(0.015) - 1e-12 <= o.low <= quantile(0.035) + 1e-12
    assert quantile(0.965) - 1e-12 <= o.high <= quantile(0.985) + 1e-12
    assert o.difference == pytest.approx(task_score(compute_metrics(names, a, context)) -
                                         task_score(compute_metrics(names, b, context)))


def test_interval_matches_the_normal_approximation_for_accuracy():
    rng = np.random.default_rng(1)
    hits_a, hits_b = rng.random(400) < 0.7, rng.random(400) < 0.6
    o = paired_examples(_hits(hits_a), _hits(hits_b), ["accuracy"], resamples=9999)
    d = hits_a.astype(float) - hits_b.astype(float)
    assert o.difference == pytest.approx(d.mean())
    se = d.std() / np.sqrt(len(d))  # the bootstrap's standard error of a mean, in closed form
    assert o.low == pytest.approx(d.mean() - 1.96 * se, abs=0.01)
    assert o.high == pytest.approx(d.mean() + 1.96 * se, abs=0.01)
    assert o.p_value < 0.05 and o.low > 0


def test_permutation_p_equals_enumerating_every_swap():
    """Few examples: scipy enumerates all 2**n swaps; so does this test, scoring each with scikit-learn."""
    context = MetricContext(("0", "1"))
    refs = list("1011010")
    a = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip("1011011", refs))]
    b = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip("0110010", refs))]
    names = ["matthews_corrcoef"]

    def diff(x, y):
        return task_score(compute_metrics(names, x, context)) - task_score(compute_metrics(names, y, context))

    observed = diff(a, b)
    null = [diff([b[i] if s else a[i] for i, s in enumerate(swap)], [a[i] if s else b[i] for i, s in enumerate(swap)])
            for swap in itertools.product([0, 1], repeat=len(refs))]
    exact = np.mean([abs(t) >= abs(observed) - 1e-12 for t in null])  # the null is symmetric: two tails
    o = paired_examples(a, b, names, context.labels, context.positive)
    assert o.p_value == pytest.approx(exact, abs=1e-12)


def test_accuracy_p_is_the_exact_swap_distribution():
    """Plain accuracy takes the closed form (McNemar's exact test): it equals enumerating every swap."""
    hits_a = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1], bool)
    hits_b = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1], bool)
    observed = hits_a.mean() - hits_b.mean()
    null = [np.where(swap, hits_b, hits_a).mean() - np.where(swap, hits_a, hits_b).mean()
            for swap in itertools.product([False, True], repeat=len(hits_a))]
    exact = np.mean([abs(t) >= abs(observed) - 1e-12 for t in null])
    assert paired_examples(_hits(hits_a), _hits(hits_b), ["accuracy"]).p_value == pytest.approx(exact, abs=1e-12)


def test_accuracy_p_agrees_with_scipys_permutation_test():
    rng = np.random.default_rng(5)
    hits_a, hits_b = rng.random(300) < 0.68, rng.random(300) < 0.55
    o = paired_examples(_hits(hits_a), _hits(hits_b), ["accuracy"])
    mc = stats.permutation_test((hits_a.astype(float), hits_b.astype(float)),
                                lambda x, y, axis: x.mean(axis) - y.mean(axis), permutation_type="samples",
                                vectorized=True, n_resamples=9999, rng=np.random.default_rng(0)).pvalue
    assert 0.01 < o.p_value < 0.05 and o.p_value == pytest.approx(mc, abs=0.006)  # 3 standard errors of mc
    assert o.low > 0 or o.p_value > 0.05  # the interval and the test agree on this data


def test_resampling_is_seeded():
    rng = np.random.default_rng(5)
    a, b = _classification(rng, 80, ["0", "1"]), _classification(rng, 80, ["0", "1"])
    run = [paired_examples(a, b, ["matthews_corrcoef"], seed=s) for s in (0, 0, 1)]
    assert run[0] == run[1] and run[0].p_value != run[2].p_value


# --------------------------------------------------------------------------- seed level
def test_paired_seed_test_is_the_t_test_by_hand():
    a, b = {0: 0.61, 1: 0.66, 2: 0.64}, {0: 0.55, 1: 0.62, 2: 0.56}
    o, paired = seed_scores_test(a, b)
    d = np.array([a[s] - b[s] for s in (0, 1, 2)])
    se = d.std(ddof=1) / math.sqrt(3)
    t = d.mean() / se
    assert paired and o.difference == pytest.approx(d.mean())
    assert o.p_value == pytest.approx(2 * stats.t.sf(abs(t), 2))
    half = stats.t.ppf(0.975, 2) * se
    assert (o.low, o.high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_seed_test_without_the_same_seeds_is_welch_by_hand():
    a, b = {0: 0.61, 1: 0.66, 2: 0.64}, {3: 0.55, 4: 0.62, 5: 0.56, 6: 0.5}
    o, paired = seed_scores_test(a, b)
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    va, vb = xa.var(ddof=1) / 3, xb.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    t = (xa.mean() - xb.mean()) / math.sqrt(va + vb)
    assert not paired
    assert o.p_value == pytest.approx(2 * stats.t.sf(abs(t), df))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (o.low, o.high) == pytest.approx((xa.mean() - xb.mean() - half, xa.mean() - xb.mean() + half))


def test_seed_test_without_spread_has_no_p():
    o, _ = seed_scores_test({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert (o.low, o.high, o.p_value) == (None, None, None) and o.difference == pytest.approx(0.1)
    o, _ = seed_scores_test({0: 0.6, 1: 0.7, 2: 0.8}, {0: 0.6, 1: 0.7, 2: 0.8})
    assert (o.difference, o.low, o.high, o.p_value) == (0.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------- a results directory
class Results:
    """A downstream results directory written by hand, in mkeval's layout."""

    def __init__(self, root):
        self.root = root

    def unit(self, unit, model, seed):
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / f"{unit}_downstream.json").write_text(json.dumps({"unit": unit, "model_name": model,
                                                                          "seed": seed}))

    def task(self, unit, task, modes, groups=("glue",), metrics=("accuracy",), labels=("0", "1"), positive=None):
        """``modes``: mode name -> records."""
        folder = self.root / "downstream" / unit
        folder.mkdir(parents=True, exist_ok=True)
        result = {"task": task, "status": "ok", "groups": list(groups), "metric_names": list(metrics),
                  "labels": list(labels), "positive_label": positive, "prompt": {}}
        for mode, recs in modes.items():
            name = f"{task}.predictions.jsonl" if mode == "fine-tuned" else f"{task}.{mode.split('-')[0]}shot." \
                "predictions.jsonl"
            (folder / name).write_text("".join(json.dumps(r) + "\n" for r in reversed(recs)))  # pairing is by id
            section = {"status": "ok", "metrics": {}, "predictions_file": name}
            if mode == "fine-tuned":
                result["finetune"] = section
            else:
                result["prompt"][mode] = section
        (folder / f"{task}.json").write_text(json.dumps(result))


def test_compare_models_pairs_by_id_and_pools_the_named_groups(tmp_path):
    d = Results(tmp_path)
    d.task("x", "rte", {"fine-tuned": _hits([1] * 30), "0-shot": _hits([1, 0] * 15)})
    d.task("y", "rte", {"fine-tuned": _hits([1] * 15 + [0] * 15), "0-shot": _hits([0, 1] * 15)})
    d.task("x", "mmlu_a", {"0-shot": _hits([1, 0] * 5)}, ("mmlu", "mmlu_stem"), labels="ABCD")
    d.task("y", "mmlu_a", {"0-shot": _hits([0, 0] * 5)}, ("mmlu", "mmlu_stem"), labels="ABCD")
    d.task("x", "mmlu_b", {"0-shot": _hits([1] * 10)}, ("mmlu",), labels="ABCD")
    d.task("y", "mmlu_b", {"0-shot": _hits([1] * 10)}, ("mmlu",), labels="ABCD")
    d.task("x", "mrpc", {"fine-tuned": _hits([1, 1, 0] * 10)}, ("glue",), ("accuracy", "f1"), positive="1")
    d.task("y", "mrpc", {"fine-tuned": _hits([1, 0, 0] * 10)}, ("glue",), ("accuracy", "f1"), positive="1")
    d.task("x", "only_x", {"fine-tuned": _hits([1] * 10)})
    out = compare_models(tmp_path, ["x"], ["y"], pool=["mmlu", "mmlu_stem", "glue_nothing"])
    assert [(c.task, c.mode) for c in out] == [("mrpc", "fine-tuned"), ("rte", "fine-tuned"), ("rte", "0-shot"),
                                               ("mmlu", "0-shot"), ("mmlu_stem", "0-shot")]
    rte = out[1]
    assert (rte.difference, rte.examples, rte.seeds, rte.pooled) == (pytest.approx(0.5), 30, (1, 1), ())
    assert rte.method.startswith("example-level only") and rte.low > 0 and rte.p_value < 0.01
    pooled = out[3]
    assert pooled.pooled == ("mmlu_a", "mmlu_b") and pooled.examples == 20
    assert (pooled.score_a, pooled.score_b) == (pytest.approx(15 / 20), pytest.approx(0.5))
    assert out[4].pooled == ("mmlu_a",) and out[4].examples == 10
    mrpc = out[0]  # in the "glue" group but scored by accuracy and F1: never pooled
    context = MetricContext(("0", "1"), "1")
    assert mrpc.score_a == pytest.approx(task_score(compute_metrics(["accuracy", "f1"], _hits([1, 1, 0] * 10),
                                                                      context)))


def test_constant_predictors_are_not_meaningful(tmp_path):
    """The finding: two untrained models, one always "0", one always "1", 'differ' with p = 0.000."""
    d = Results(tmp_path)
    refs = ["1", "0", "1"] * 20
    for unit, label in (("bk", "0"), ("mamba", "1")):
        d.task(unit, "mrpc", {"0-shot": [{"id": str(i), "prediction": label, "reference": r}
                                        for i, r in enumerate(refs)]}, metrics=("accuracy", "f1"), positive="1")
    (c,) = compare_models(tmp_path, ["bk"], ["mamba"])
    assert c.p_value < 0.05 and c.difference < 0  # what the old report showed as a finding
    assert not c.meaningful
    assert "bk predicts '0' for every example" in c.note and "mamba predicts '1' for every example" in c.note


def test_mostly_tied_prompt_scores_are_not_meaningful(tmp_path):
    d = Results(tmp_path)
    rng = np.random.default_rng(0)
    a = _classification(rng, 40, ["0", "1"])
    b = _classification(rng, 40, ["0", "1"], right=0.9)
    for i, r in enumerate(a):
        r["tie"] = i < 30
    d.task("x", "rte", {"0-shot": a})
    d.task("y", "rte", {"0-shot": b})
    (c,) = compare_models(tmp_path, ["x"], ["y"])
    assert not c.meaningful and "x has 30 of 40 examples tied between options" in c.note
    for r in a:
        r["tie"] = False
    d.task("x", "rte", {"0-shot": a})
    assert compare_models(tmp_path, ["x"], ["y"])[0].meaningful


def test_a_single_example_has_no_interval(tmp_path):
    d = Results(tmp_path)
    d.task("x", "rte", {"fine-tuned": _hits([1])})
    d.task("y", "rte", {"fine-tuned": _hits([0])})
    (c,) = compare_models(tmp_path, ["x"], ["y"])
    assert (c.examples, c.low, c.high, c.p_value, c.meaningful) == (1, None, None, None, False)


def _seeded(tmp_path, seeds_a, seeds_b, right_a=0.8, right_b=0.5):
    d = Results(tmp_path)
    rng = np.random.default_rng(0)
    refs = [str(v) for v in rng.integers(0, 2, 50)]
    per_unit = {}
    for model, seeds, right in (("bk", seeds_a, right_a), ("mamba", seeds_b, right_b)):
        for s in seeds:
            unit = f"{model}_s{s}"
            d.unit(unit, model, s)
            recs = [{"id": str(i), "reference": r, "prediction": r if rng.random() < right else str(1 - int(r))}
                    for i, r in enumerate(refs)]
            d.task(unit, "rte", {"fine-tuned": recs})
            per_unit[unit] = task_score(compute_metrics(["accuracy"], recs, MetricContext()))
    return per_unit


def test_three_seeds_each_give_a_paired_test_over_seeds(tmp_path):
    scores = _seeded(tmp_path, [0, 1, 2], [0, 1, 2])
    (c,) = compare_models(tmp_path, ["bk_s0", "bk_s1", "bk_s2"], ["mamba_s2", "mamba_s0", "mamba_s1"])
    assert (c.a, c.b, c.seeds, c.examples, c.seed_level) == ("bk", "mamba", (3, 3), 50, True)
    assert c.method.startswith("seed-level: paired t-test")
    xa = [scores[f"bk_s{s}"] for s in range(3)]
    xb = [scores[f"mamba_s{s}"] for s in range(3)]
    assert c.score_a == pytest.approx(np.mean(xa)) and c.score_b == pytest.approx(np.mean(xb))
    assert c.p_value == pytest.approx(stats.ttest_rel(xa, xb).pvalue)
    assert c.meaningful


def test_different_seed_sets_give_an_unpaired_test(tmp_path):
    _seeded(tmp_path, [0, 1, 2], [3, 4, 5, 6])
    (c,) = compare_models(tmp_path, [f"bk_s{s}" for s in range(3)], [f"mamba_s{s}" for s in range(3, 7)])
    assert c.seeds == (3, 4) and c.method.startswith("seed-level: Welch t-test")


def test_fewer_than_three_seeds_compare_examples_of_one_seed(tmp_path):
    assert MIN_SEEDS == 3
    _seeded(tmp_path, [1, 2], [0, 2])
    (c,) = compare_models(tmp_path, ["bk_s1", "bk_s2"], ["mamba_s0", "mamba_s2"])
    assert c.seeds == (1, 1) and "seed 2 vs 2" in c.method and c.method.startswith("example-level only")
    with pytest.raises(ValueError, match="seed 1 twice"):
        compare_models(tmp_path, ["bk_s1", "bk_s1"], ["mamba_s0"])


def test_multirc_resamples_questions(tmp_path):
    d = Results(tmp_path)
    rng = np.random.default_rng(2)
    recs, context = _case("multirc", rng, n=80)
    other = [dict(r, prediction=r["reference"] if rng.random() < 0.5 else "1") for r in recs]
    for unit, rs in (("x", recs), ("y", other)):
        d.task(unit, "multirc", {"fine-tuned": rs}, ("superglue",), ("multirc",), positive="1")
    (c,) = compare_models(tmp_path, ["x"], ["y"])
    assert "over questions" in c.method and c.examples == len(recs)
    assert c.score_a == pytest.approx(task_score(compute_metrics(["multirc"], recs, context)))
    assert c.low <= c.difference <= c.high


def test_comparison_fields():
    names = [f for f in Comparison.__dataclass_fields__]
    assert names == ["task", "mode", "a", "b", "examples", "seeds", "score_a", "score_b", "difference", "low", "high",
                     "p_value", "method", "meaningful", "note", "pooled"]


def test_a_readme_sized_directory_is_compared_quickly(tmp_path):
    """Regression guard for the 46-59 s report: 10 tasks x 3 modes and 57 pooled subjects x 3 modes, 64 each."""
    d = Results(tmp_path)
    rng = np.random.default_rng(0)
    for unit in ("bk", "mamba"):
        for t in range(10):
            modes = {m: _classification(rng, 64, ["0", "1"]) for m in ("fine-tuned", "0-shot", "5-shot")}
            d.task(unit, f"task{t}", modes, metrics=("accuracy", "f1") if t % 2 else ("matthews_corrcoef",),
                   positive="1")
        for s in range(57):
            modes = {m: _classification(rng, 64, list("ABCD"), right=0.3) for m in ("fine-tuned", "0-shot", "5-shot")}
            d.task(unit, f"mmlu_{s}", modes, ("mmlu",), labels="ABCD")
    start = time.perf_counter()
    out = compare_models(tmp_path, ["bk"], ["mamba"], pool=["mmlu"])
    elapsed = time.perf_counter() - start
    assert len(out) == 33
    assert elapsed < 10, f"{elapsed:.1f} s"
