"""Metrics: hand-computed values, the official SQuAD rules, MultiRC/ReCoRD grouping, leaderboard averages."""

import logging
import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from mkeval.errors import UsageError
from mkeval.metrics import (
    METRICS, MetricContext, accuracy, compute_metrics, f1, macro_f1, matthews_corrcoef,
    multirc_scores, normalize_answer, pearson, record_scores, spearman, squad_exact_match, squad_f1,
    squad_scores, task_score,
)
from mkeval_tasks.groups import benchmark_average  # GLUE/SuperGLUE's leaderboard rule: the tasks plugin's

# idx:   0  1  2  3  4  5
REFS = ["1", "0", "1", "1", "0", "1"]
PREDS = ["1", "0", "0", "1", "1", "1"]
# positive "1": TP = {0, 3, 5} = 3, FN = {2} = 1, FP = {4} = 1, TN = {1} = 1


def test_classification_metrics_match_hand_computation():
    assert accuracy(REFS, PREDS) == pytest.approx(4 / 6)  # right at 0, 1, 3, 5
    assert f1(REFS, PREDS, "1") == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 2TP / (2TP + FP + FN) = 0.75
    # positive "0": TP = {1}, FP = {2}, FN = {4} -> 2 / 4
    assert f1(REFS, PREDS, "0") == pytest.approx(0.5)
    assert macro_f1(REFS, PREDS, ["0", "1"]) == pytest.approx((0.75 + 0.5) / 2)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3 - 1) / sqrt(4*4*2*2) = 2 / 8
    assert matthews_corrcoef(REFS, PREDS) == pytest.approx(0.25)


def test_macro_f1_three_classes_and_declared_labels():
    refs, preds = list("aabbcc"), list("abbbca")
    # a: TP 1, FP 1, FN 1 -> 1/2; b: TP 2, FP 1, FN 0 -> 4/5; c: TP 1, FP 0, FN 1 -> 2/3
    per_class = [0.5, 0.8, 2 / 3]
    assert macro_f1(refs, preds, "abc") == pytest.approx(sum(per_class) / 3)
    # a declared label never seen scores 0 and still counts in the mean
    assert macro_f1(refs, preds, "abcd") == pytest.approx(sum(per_class) / 4)


def test_classification_metrics_match_sklearn_on_random_labels():
    rng = np.random.default_rng(0)
    refs = rng.choice(["neg", "pos"], 200).tolist()
    preds = [r if rng.random() < 0.7 else rng.choice(["neg", "pos"]) for r in refs]
    assert accuracy(refs, preds) == pytest.approx(np.mean(np.array(refs) == np.array(preds)))
    assert f1(refs, preds, "pos") == pytest.approx(skm.f1_score(refs, preds, pos_label="pos"))
    assert macro_f1(refs, preds, ["neg", "pos"]) == pytest.approx(skm.f1_score(refs, preds, average="macro"))
    assert matthews_corrcoef(refs, preds) == pytest.approx(skm.matthews_corrcoef(refs, preds))


def test_correlations_match_textbook_formulas():
    x = np.arange(1.0, 6.0)
    y = x ** 3  # monotone but not linear
    dx, dy = x - x.mean(), y - y.mean()
    textbook = (dx * dy).sum() / math.sqrt((dx ** 2).sum() * (dy ** 2).sum())
    assert pearson(x, y) == pytest.approx(textbook)
    assert pearson(x, y) == pytest.approx(304 / math.sqrt(10 * 10390))  # dx.dy = 304, |dx|^2 = 10, |dy|^2 = 10390
    assert spearman(x, y) == pytest.approx(1.0)
    assert spearman(x, -y) == pytest.approx(-1.0)
    # ties get mean ranks: [1, 2.5, 2.5, 4] vs [1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_constant_input_scores_zero_with_a_warning(fn, caplog):
    with caplog.at_level(logging.WARNING, logger="mkeval.metrics"):
        assert fn([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0
        assert fn([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]) == 0.0
    assert "constant input" in caplog.text


@pytest.mark.parametrize("text, normalized", [
    ("The Cat", "cat"),
    ("an apple", "apple"),
    ("A Dog", "dog"),  # lower case first, so capitalised articles go too
    ("theater", "theater"),  # articles only as whole words
    ("U.S.", "us"),
    ("rock-n-roll", "rocknroll"),
    ("the-end", "theend"),  # punctuation goes before articles, as in the official script
    ("  New   York ", "new york"),
])
def test_normalize_answer_official_rules(text, normalized):
    assert normalize_answer(text) == normalized


def test_squad_exact_match_and_f1():
    assert squad_exact_match("The Cat", ["cat"]) == 1.0
    assert squad_exact_match("U.S.", ["US"]) == 1.0
    assert squad_exact_match("  New   York ", ["new york"]) == 1.0
    # [big, red, dog] vs [red, dog, barked]: 2 common, precision 2/3, recall 2/3
    assert squad_f1("the big red dog", ["red dog barked"]) == pytest.approx(2 / 3)
    # repeated tokens count once per gold occurrence: precision 1/3, recall 1 -> F1 1/2
    assert squad_f1("dog dog dog", ["dog"]) == pytest.approx(0.5)
    assert squad_f1("blue sky", ["red dog"]) == 0.0
    assert squad_exact_match("blue sky", ["red dog"]) == 0.0
    # the official quirk: an answer that normalises to nothing matches exactly but has no tokens to overlap
    assert (squad_exact_match("the", ["a"]), squad_f1("the", ["a"])) == (1.0, 0.0)


def test_squad_max_over_gold_answers():
    golds = ["the city of Paris", "Paris, France"]
    assert squad_exact_match("Paris", golds) == 0.0
    assert squad_exact_match("Paris", golds + ["paris"]) == 1.0
    # [paris] vs [city, of, paris]: P 1, R 1/3 -> 1/2; vs [paris, france]: P 1, R 1/2 -> 2/3
    assert squad_f1("Paris", golds) == pytest.approx(2 / 3)


def test_squad_scores_are_fractions():
    records = [{"id": "q1", "prediction": "The Cat", "reference": ["cat"]},
               {"id": "q2", "prediction": "the big red dog", "reference": ["red dog barked"]}]
    assert squad_scores(records) == pytest.approx({"em": 0.5, "f1": (1 + 2 / 3) / 2})


def test_record_scores_take_the_best_answer():
    records = [{"id": "r1", "prediction": "Barack Obama", "reference": ["Obama", "Barack Obama"]},
               # [obama] vs [barack, obama] -> 2/3; vs [president, barack, obama] -> 1/2
               {"id": "r2", "prediction": "Obama", "reference": ["Barack Obama", "President Barack Obama"]}]
    assert record_scores(records) == pytest.approx({"em": 0.5, "f1": (1 + 2 / 3) / 2})


def test_multirc_f1a_and_question_em():
    def option(group, i, ref, pred):
        return {"id": f"{group}-{i}", "group": group, "reference": ref, "prediction": pred}

    # q1 gets option 1 wrong (FP) and option 2 wrong (FN); q2 is all right. Options interleaved on purpose.
    records = [option("q1", 0, "1", "1"), option("q2", 0, "0", "0"), option("q1", 1, "0", "1"),
               option("q2", 1, "1", "1"), option("q1", 2, "1", "0"), option("q2", 2, "1", "1"),
               option("q1", 3, "0", "0")]
    # over all 7 options: TP 3, FP 1, FN 1 -> 6 / 8; EM: 1 of 2 questions
    assert multirc_scores(records) == pytest.approx({"f1a": 0.75, "em": 0.5})


def test_compute_metrics_merges_named_values_as_plain_floats():
    records = [{"id": str(i), "reference": r, "prediction": p} for i, (r, p) in enumerate(zip(REFS, PREDS))]
    out = compute_metrics(["accuracy", "f1", "matthews_corrcoef"], records, MetricContext(("0", "1"), "1"))
    assert out == pytest.approx({"accuracy": 4 / 6, "f1": 0.75, "matthews_corrcoef": 0.25})
    assert all(type(v) is float for v in out.values())
    numbers = [{"id": str(i), "reference": str(i), "prediction": str(i ** 2)} for i in range(1, 6)]
    assert compute_metrics(["spearman"], numbers, MetricContext()) == {"spearman": pytest.approx(1.0)}
    assert set(METRICS) == {"accuracy", "f1", "macro_f1", "matthews_corrcoef", "pearson", "spearman",
                            "squad", "multirc", "record"}


def test_compute_metrics_errors():
    records = [{"id": "0", "reference": "1", "prediction": "1"}]
    with pytest.raises(UsageError, match="'acuracy'.*did you mean 'accuracy'"):
        compute_metrics(["acuracy"], records, MetricContext())
    with pytest.raises(ValueError, match="no prediction records"):
        compute_metrics(["accuracy"], [], MetricContext())
    with pytest.raises(ValueError, match="'f1'.*positive"):
        compute_metrics(["f1"], records, MetricContext())


def test_task_score_averages_a_tasks_metrics():
    assert task_score({"accuracy": 0.8, "f1": 0.9}) == pytest.approx(0.85)
    assert task_score({"matthews_corrcoef": 0.3}) == pytest.approx(0.3)


GLUE_LIKE = ["cola", "mnli", "mnli_mismatch", "rte"]
MNLI = {"mnli": ["mnli", "mnli_mismatch"]}
SCORES = {"cola": {"matthews_corrcoef": 0.3}, "mnli": {"accuracy": 0.8}, "mnli_mismatch": {"accuracy": 0.7},
          "rte": {"accuracy": 0.6}}


def test_benchmark_average_merges_mnli_into_one_task():
    out = benchmark_average(SCORES, GLUE_LIKE, MNLI)
    # three leaderboard tasks: 0.3, (0.8 + 0.7) / 2, 0.6; counting MNLI twice would give 0.6
    assert out["average"] == pytest.approx((0.3 + 0.75 + 0.6) / 3)
    assert out["average_over_evaluated"] == pytest.approx(out["average"])
    assert out["task_scores"] == pytest.approx({"cola": 0.3, "mnli": 0.75, "rte": 0.6})
    assert (out["tasks_evaluated"], out["tasks_missing"], out["complete"]) == (GLUE_LIKE, [], True)
    assert benchmark_average(SCORES, GLUE_LIKE)["average"] == pytest.approx(0.6)


def test_incomplete_benchmark_has_no_average():
    out = benchmark_average({k: v for k, v in SCORES.items() if k != "rte"}, GLUE_LIKE, MNLI)
    assert out["average"] is None and out["complete"] is False
    assert out["average_over_evaluated"] == pytest.approx((0.3 + 0.75) / 2)
    assert out["tasks_missing"] == ["rte"]
    # half of a merged group: scored from the half present, but the benchmark is incomplete
    out = benchmark_average({k: v for k, v in SCORES.items() if k != "mnli_mismatch"}, GLUE_LIKE, MNLI)
    assert out["average"] is None and out["tasks_missing"] == ["mnli_mismatch"]
    assert out["average_over_evaluated"] == pytest.approx((0.3 + 0.8 + 0.6) / 3)
    none = benchmark_average({}, GLUE_LIKE, MNLI)
    assert none["average"] is None and none["average_over_evaluated"] is None


def test_two_metric_tasks_are_averaged_first():
    out = benchmark_average({"mrpc": {"accuracy": 0.8, "f1": 0.9}, "rte": {"accuracy": 0.6}}, ["mrpc", "rte"])
    # (0.85 + 0.6) / 2, not the pooled (0.8 + 0.9 + 0.6) / 3
    assert out["average"] == pytest.approx(0.725)


def test_metrics_module_does_not_import_torch():
    code = "import sys, mkeval.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
