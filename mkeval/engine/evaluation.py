"""Perplexity and next-token accuracy on held-out windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batching import Windows, eval_batches
from .distributed import SINGLE, World
from .precision import autocast
from ..registry.contracts import PrecisionSpec


@dataclass
class LMEval:
    """Totals over the scored tokens of one evaluation."""

    nll: float  # summed negative log-likelihood, nats
    tokens: int  # scored target tokens
    correct: int  # targets equal to the argmax prediction

    @property
    def loss(self) -> float:
        """Mean NLL per scored token, nats."""
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if math.isfinite(self.loss) and self.loss < 700 else math.inf

    @property
    def accuracy(self) -> float:
        return self.correct / self.tokens if self.tokens else math.nan


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    windows: Windows,
    batch_size: int,
    precision: PrecisionSpec,
    device: torch.device,
    world: World = SINGLE,
) -> LMEval:
    """Score every masked target of ``windows`` with ``model`` in eval mode (sums in float64).

    Under data parallelism (``world``) each rank scores every ``size``-th window and the sums
    are reduced, so every rank returns the totals over all windows."""
    if world.parallel:
        windows = windows.select(world.shard(len(windows)))
    was_training = model.training
    model.eval()
    nll = 0.0
    tokens = 0
    correct = 0
    try:
        for batch in eval_batches(windows, batch_size):
            inputs = batch.inputs.to(device)
            targets = batch.targets.to(device)
            mask = batch.mask.to(device)
            with autocast(precision, device):
                logits = model(inputs)
            logits = logits.float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
            nll += float(losses[mask].double().sum())
            tokens += int(mask.sum())
            correct += int(((logits.argmax(-1) == targets) & mask).sum())
    finally:
        model.train(was_training)
    if world.parallel:
        nll, total, right = world.sum([nll, float(tokens), float(correct)], device)
        tokens, correct = round(total), round(right)
    return LMEval(nll=nll, tokens=tokens, correct=correct)
