"""Effective context: how strongly a trained model's prediction depends on tokens d positions back.

A perturbation probe on held-out windows: the token at position ``t - d`` is replaced by another
token, and the next-token distribution at the last position ``t`` is compared with the
unperturbed one (total variation distance, and the largest change of a logit). A model that
uses a long context changes its prediction when far tokens change; one that uses only the last
few tokens does not, whatever its architecture could do in principle. This explains results
such as few-shot scores equal to zero-shot ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batching import Windows
from .precision import autocast


def probe_distances(seq_len: int) -> list[int]:
    """0 (the token at t itself), powers of two, and the farthest position (d = t = seq_len - 1)."""
    out = {0, seq_len - 1}
    d = 1
    while d < seq_len - 1:
        out.add(d)
        d *= 2
    return sorted(out)


@torch.no_grad()
def effective_context(model: nn.Module, windows: Windows, precision: Any, device: torch.device,
                      max_windows: int = 16, seed: int = 0) -> dict[str, Any] | None:
    """The probe on the first ``max_windows`` windows; None when there are none."""
    count = min(max_windows, len(windows))
    if count == 0:
        return None
    ids = windows.take(torch.arange(count)).inputs.to(device)
    n = ids.shape[1]
    t = n - 1
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, device):
            base = model(ids)[:, t].float()
        vocab = base.shape[-1]
        gen = torch.Generator().manual_seed(seed)
        distances, tv, max_logit = [], [], []
        for d in probe_distances(n):
            changed = ids.clone()
            shift = torch.randint(1, vocab, (count,), generator=gen).to(device)  # never the same token
            changed[:, t - d] = (changed[:, t - d] + shift) % vocab
            with autocast(precision, device):
                logits = model(changed)[:, t].float()
            distances.append(d)
            tv.append(float(0.5 * (logits.softmax(-1) - base.softmax(-1)).abs().sum(-1).mean()))
            max_logit.append(float((logits - base).abs().max(-1).values.mean()))
    finally:
        model.train(was_training)
    return {"position": t, "windows": count, "distances": distances, "total_variation": tv,
            "max_abs_logit_change": max_logit}
