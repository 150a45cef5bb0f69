"""A first-order Markov chain whose entropy rate is known exactly.

Transition rows are drawn from a symmetric Dirichlet(alpha); each split is a chain
started from the stationary distribution pi, so every position has the same
conditional entropy, the entropy rate H = -sum_i pi_i sum_j P_ij log P_ij (nats).
Given the previous token a model can do no better than perplexity exp(H).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from mkeval import DataRequest, LMData, TokenSplit, UsageError

from .common import generators, option

VOCAB = 32
ALPHA = 0.5
EVAL_TOKENS = 65_536  # each of valid and test


@dataclass(frozen=True)
class MarkovSource:
    transition: np.ndarray  # [V, V], rows sum to 1

    @cached_property
    def stationary(self) -> np.ndarray:
        """pi with pi P = pi, from the eigenvector of P^T for eigenvalue 1."""
        values, vectors = np.linalg.eig(self.transition.T)
        v = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        return v / v.sum()

    @property
    def entropy_rate(self) -> float:
        """H in nats per token."""
        p = self.transition
        row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=1)
        return float(self.stationary @ row_entropy)

    @property
    def optimal_accuracy(self) -> float:
        """Accuracy of always predicting the most likely next token."""
        return float(self.stationary @ self.transition.max(axis=1))

    def sample(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """A stationary chain of ``length`` tokens.

        Each state gets its own queue of successor draws from its row, consumed in order;
        every visit uses a fresh independent draw, so the law is exactly the chain's.
        """
        v = self.transition.shape[0]
        pi = self.stationary
        queues = [list(rng.choice(v, size=int(pi[s] * length * 1.2) + 64, p=self.transition[s])) for s in range(v)]
        heads = [0] * v
        out = [0] * length
        state = int(rng.choice(v, p=pi))
        for t in range(length):
            out[t] = state
            q = queues[state]
            if heads[state] == len(q):
                q.extend(rng.choice(v, size=len(q), p=self.transition[state]))
            nxt = q[heads[state]]
            heads[state] += 1
            state = int(nxt)
        return np.asarray(out, dtype=np.int64)


def make_source(vocab: int, alpha: float, rng: np.random.Generator) -> MarkovSource:
    return MarkovSource(rng.dirichlet(np.full(vocab, alpha), size=vocab))


def load(request: DataRequest) -> LMData:
    vocab = option(request, "vocab", VOCAB)
    alpha = float(request.options.get("alpha", ALPHA))
    if not alpha > 0:
        raise UsageError(f"markov: option 'alpha' must be positive, got {alpha}")
    gens = generators(request, "markov")
    source = make_source(vocab, alpha, gens["params"])
    sizes = {"train": request.train_tokens + request.seq_len + 1, "valid": EVAL_TOKENS + 1, "test": EVAL_TOKENS + 1}
    splits = {name: TokenSplit(torch.from_numpy(source.sample(n, gens[name])), info={"tokens": n - 1})
              for name, n in sizes.items()}
    h = source.entropy_rate
    return LMData(
        vocab_size=vocab,
        splits=splits,
        optimal_perplexity=math.exp(h),
        info={"source": "markov", "order": 1, "vocab": vocab, "alpha": alpha, "seed": request.seed,
              "entropy_rate_nats": h, "optimal_accuracy": source.optimal_accuracy},
    )
