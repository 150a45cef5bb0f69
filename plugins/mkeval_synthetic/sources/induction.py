"""Induction heads (Olsson et al., 2022; the Mamba paper's version, section 3.1).

Random tokens, with a trigger token placed once followed by a token X; the example ends
with the trigger again and the model must predict X. Only that last token is scored.

Vocabulary: 0 = trigger, then ``vocab - 1`` ordinary tokens.
"""

from __future__ import annotations

import numpy as np

from mkeval import DataRequest, LMData, UsageError

from .common import EVAL_EXAMPLES, example_split, generators, option, train_examples

TRIGGER = 0


def generate(count: int, length: int, vocab: int, rng: np.random.Generator):
    tokens = rng.integers(1, vocab, size=(count, length))
    mask = np.zeros((count, length), dtype=bool)
    position = rng.integers(0, length - 3, size=count)  # trigger, X, ..., trigger, X
    rows = np.arange(count)
    tokens[rows, position] = TRIGGER
    tokens[:, length - 2] = TRIGGER
    tokens[:, length - 1] = tokens[rows, position + 1]
    mask[:, length - 1] = True
    return tokens, mask


def load(request: DataRequest) -> LMData:
    vocab = option(request, "vocab", 16)
    length = request.seq_len + 1
    if length < 5 or vocab < 2:
        raise UsageError(f"induction: needs seq_len >= 4 and vocab >= 2 (got {request.seq_len}, {vocab})")
    gens = generators(request, "induction")
    counts = {"train": train_examples(request), "valid": EVAL_EXAMPLES, "test": EVAL_EXAMPLES}
    splits = {name: example_split(*generate(n, length, vocab, gens[name])) for name, n in counts.items()}
    return LMData(
        vocab_size=vocab,
        splits=splits,
        optimal_perplexity=1.0,
        info={"source": "induction", "vocab": vocab, "seed": request.seed},
    )
