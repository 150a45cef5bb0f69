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

``compare.py`` pairs two models' predictions (``predictions.py`` reads them) and picks the test;
``resampling.py`` holds the tests (bootstrap, permutation, seed level), ``metrics.py`` and ``scorer.py`` the task metrics over arrays,
``artefacts.py`` the constant-predictor and tie rule.
"""

from .artefacts import TIE_SHARE, artefacts
from .compare import MIN_SEEDS, Comparison, compare_models
from .predictions import FINETUNED
from .scorer import task_metrics
from .resampling import CONFIDENCE, RESAMPLES, SEED, Outcome, paired_examples, seed_scores_test

__all__ = ["CONFIDENCE", "FINETUNED", "MIN_SEEDS", "RESAMPLES", "SEED", "TIE_SHARE", "Comparison", "Outcome",
           "artefacts", "compare_models", "paired_examples", "seed_scores_test", "task_metrics"]
