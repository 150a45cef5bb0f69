"""Shared pieces of the synthetic sources: seeded generators per split, split sizes, packing."""

from __future__ import annotations

import numpy as np
import torch

from mkeval import DataRequest, TokenSplit, UsageError

SPLITS = ("train", "valid", "test")
EVAL_EXAMPLES = 1024  # examples in each of valid and test for the example-based tasks


def generators(request: DataRequest, name: str) -> dict[str, np.random.Generator]:
    """Independent generators for the source's parameters and each split.

    Each split has its own stream, so valid/test do not change with the training budget.
    """
    salt = sum(name.encode())  # different sources differ even under one seed
    children = np.random.SeedSequence([request.seed, salt]).spawn(len(SPLITS) + 1)
    gens = {split: np.random.default_rng(child) for split, child in zip(SPLITS, children)}
    gens["params"] = np.random.default_rng(children[-1])
    return gens


def option(request: DataRequest, key: str, default: int) -> int:
    value = request.options.get(key, default)
    if not isinstance(value, int) or value <= 0:
        raise UsageError(f"dataset option {key!r} must be a positive integer, got {value!r}")
    return value


def train_examples(request: DataRequest) -> int:
    """Enough examples of ``seq_len + 1`` tokens to cover the training budget once."""
    return max(request.train_tokens // request.seq_len, 64)


def example_split(tokens: np.ndarray, mask: np.ndarray, **info) -> TokenSplit:
    return TokenSplit(torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(bool)),
                      info={"examples": int(tokens.shape[0]), "scored_tokens": int(mask[:, 1:].sum()), **info})
