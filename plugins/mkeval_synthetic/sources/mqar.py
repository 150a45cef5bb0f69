"""Multi-query associative recall (Arora et al., "Zoology", 2023).

Each example is ``k1 v1 k2 v2 ... kP vP`` (distinct keys, random values) followed by
queries ``q a q a ...``: a key seen before, then its value. Only the answers are scored;
a model that recalls perfectly reaches perplexity 1.

Vocabulary: 0 = padding, then ``keys`` key tokens, then ``values`` value tokens.
"""

from __future__ import annotations

import numpy as np

from mkeval import DataRequest, LMData, UsageError

from .common import EVAL_EXAMPLES, example_split, generators, option, train_examples


def generate(count: int, length: int, pairs: int, keys: int, values: int, rng: np.random.Generator):
    """``count`` examples of ``length`` tokens and the mask of scored (answer) tokens."""
    tokens = np.zeros((count, length), dtype=np.int64)
    mask = np.zeros((count, length), dtype=bool)
    key_ids = np.argsort(rng.random((count, keys)), axis=1)[:, :pairs] + 1  # distinct keys per example
    val_ids = rng.integers(0, values, size=(count, pairs)) + 1 + keys
    tokens[:, 0 : 2 * pairs : 2] = key_ids
    tokens[:, 1 : 2 * pairs : 2] = val_ids
    queries = (length - 2 * pairs) // 2
    which = rng.integers(0, pairs, size=(count, queries))
    rows = np.arange(count)[:, None]
    q_pos = 2 * pairs + 2 * np.arange(queries)
    tokens[:, q_pos] = key_ids[rows, which]
    tokens[:, q_pos + 1] = val_ids[rows, which]
    mask[:, q_pos + 1] = True
    return tokens, mask


def load(request: DataRequest) -> LMData:
    keys = option(request, "keys", 64)
    values = option(request, "values", 64)
    length = request.seq_len + 1
    pairs = request.options.get("pairs", min(keys, max(1, length // 8)))
    if not isinstance(pairs, int) or not 1 <= pairs <= keys or 2 * pairs + 2 > length:
        raise UsageError(
            f"mqar: {pairs!r} key-value pairs do not fit: need 1 <= pairs <= keys ({keys}) and "
            f"2 * pairs + 2 <= seq_len + 1 ({length})"
        )
    gens = generators(request, "mqar")
    counts = {"train": train_examples(request), "valid": EVAL_EXAMPLES, "test": EVAL_EXAMPLES}
    splits = {name: example_split(*generate(n, length, pairs, keys, values, gens[name])) for name, n in counts.items()}
    return LMData(
        vocab_size=1 + keys + values,
        splits=splits,
        optimal_perplexity=1.0,
        info={"source": "mqar", "keys": keys, "values": values, "pairs": pairs, "seed": request.seed,
              "queries_per_example": (length - 2 * pairs) // 2},
    )
