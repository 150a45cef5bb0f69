"""Token splits cut into (input, target) windows, and the batch order of training.

Targets are inputs shifted by exactly one position. A 1-D stream is cut into windows of
``seq_len + 1`` tokens with stride ``seq_len``, so each token after the first is a target
exactly once; for evaluation a last, overlapping window scores the tail that full windows
miss. A 2-D block of examples is used as is, one window per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import UsageError
from .specs import TokenSplit


@dataclass
class Windows:
    inputs: torch.Tensor  # LongTensor[M, N]
    targets: torch.Tensor  # LongTensor[M, N]; targets[m, t] is the token after inputs[m, t]
    mask: torch.Tensor  # BoolTensor[M, N]; True where the target is scored

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def scored_tokens(self) -> int:
        return int(self.mask.sum())


def make_windows(split: TokenSplit, seq_len: int, cover_tail: bool = False, where: str = "split") -> Windows:
    """Cut ``split`` into windows of ``seq_len`` inputs. ``cover_tail`` adds the tail window (evaluation)."""
    tokens = split.tokens
    mask = split.loss_mask
    if mask is not None and mask.shape != tokens.shape:
        raise UsageError(f"{where}: loss_mask shape {tuple(mask.shape)} differs from tokens {tuple(tokens.shape)}")
    if tokens.dim() == 2:
        if tokens.shape[1] != seq_len + 1:
            raise UsageError(
                f"{where}: examples hold {tokens.shape[1]} tokens, but seq_len {seq_len} needs {seq_len + 1}"
            )
        m = mask[:, 1:] if mask is not None else torch.ones(tokens.shape[0], seq_len, dtype=torch.bool)
        return Windows(tokens[:, :-1], tokens[:, 1:], m)
    if tokens.dim() != 1:
        raise UsageError(f"{where}: tokens must be 1-D (a stream) or 2-D (examples), got {tokens.dim()}-D")
    total = tokens.shape[0]
    if total < seq_len + 1:
        raise UsageError(f"{where}: {total} tokens is fewer than one window of seq_len + 1 = {seq_len + 1}")
    count = (total - 1) // seq_len
    used = count * seq_len
    inputs = tokens[:used].view(count, seq_len)
    targets = tokens[1 : used + 1].view(count, seq_len)
    full_mask = mask if mask is not None else torch.ones(total, dtype=torch.bool)
    m = full_mask[1 : used + 1].view(count, seq_len)
    tail = total - 1 - used  # targets not covered by the full windows
    if cover_tail and tail > 0:
        last_in = tokens[total - 1 - seq_len : total - 1]
        last_tg = tokens[total - seq_len : total]
        last_mask = full_mask[total - seq_len : total].clone()
        last_mask[: seq_len - tail] = False  # already scored by the full windows
        inputs = torch.cat([inputs, last_in[None]])
        targets = torch.cat([targets, last_tg[None]])
        m = torch.cat([m, last_mask[None]])
    return Windows(inputs, targets, m)


def limit_windows(windows: Windows, max_tokens: int = 0, max_windows: int = 0) -> Windows:
    """The leading windows holding at most ``max_tokens`` scored tokens and ``max_windows`` windows (0: no cap)."""
    count = len(windows)
    if max_windows:
        count = min(count, max_windows)
    if max_tokens:
        scored = windows.mask[:count].sum(dim=1).cumsum(0)
        count = max(1, int((scored <= max_tokens).sum()))
    return Windows(windows.inputs[:count], windows.targets[:count], windows.mask[:count])


def training_batches(windows: Windows, batch_size: int, seed: int) -> Iterator[Windows]:
    """Endless batches in a seeded order: the same windows in the same order for every model.

    Each pass over the data is a fresh permutation; a final incomplete batch is dropped.
    """
    if len(windows) < batch_size:
        raise UsageError(f"training split has {len(windows)} windows, fewer than batch_size {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(windows), generator=gen)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield Windows(windows.inputs[idx], windows.targets[idx], windows.mask[idx])


def eval_batches(windows: Windows, batch_size: int) -> Iterator[Windows]:
    for start in range(0, len(windows), batch_size):
        sl = slice(start, start + batch_size)
        yield Windows(windows.inputs[sl], windows.targets[sl], windows.mask[sl])
