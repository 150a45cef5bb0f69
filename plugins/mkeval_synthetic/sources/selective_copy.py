"""Selective copying (Gu & Dao, "Mamba", 2023, section 3.1).

An example is a region of noise tokens with ``copies`` data tokens at random positions,
a separator, then the data tokens again in their original order. Only the copied tokens
are scored (perplexity 1 is perfect).

Vocabulary: 0 = noise, 1 = separator, then ``data_vocab`` data tokens.
"""

from __future__ import annotations

import numpy as np

from mkeval import DataRequest, LMData, UsageError

from .common import EVAL_EXAMPLES, example_split, generators, option, train_examples

NOISE, SEP = 0, 1


def generate(count: int, length: int, copies: int, data_vocab: int, rng: np.random.Generator):
    region = length - copies - 1
    tokens = np.full((count, length), NOISE, dtype=np.int64)
    mask = np.zeros((count, length), dtype=bool)
    data = rng.integers(0, data_vocab, size=(count, copies)) + 2
    positions = np.sort(np.argsort(rng.random((count, region)), axis=1)[:, :copies], axis=1)
    rows = np.arange(count)[:, None]
    tokens[rows, positions] = data
    tokens[:, region] = SEP
    tokens[:, region + 1 :] = data
    mask[:, region + 1 :] = True
    return tokens, mask


def load(request: DataRequest) -> LMData:
    data_vocab = option(request, "data_vocab", 16)
    copies = option(request, "copies", 16)
    length = request.seq_len + 1
    if length - copies - 1 < copies:
        raise UsageError(f"selective-copy: seq_len {request.seq_len} is too short for {copies} copies; "
                         f"need seq_len >= {2 * copies}")
    gens = generators(request, "selective-copy")
    counts = {"train": train_examples(request), "valid": EVAL_EXAMPLES, "test": EVAL_EXAMPLES}
    splits = {name: example_split(*generate(n, length, copies, data_vocab, gens[name])) for name, n in counts.items()}
    return LMData(
        vocab_size=2 + data_vocab,
        splits=splits,
        optimal_perplexity=1.0,
        info={"source": "selective-copy", "copies": copies, "data_vocab": data_vocab, "seed": request.seed},
    )
