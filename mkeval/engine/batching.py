"""Token splits cut into (input, target) windows, and the batch order of training.

Targets are inputs shifted by exactly one position. A 1-D stream is cut into windows of
``seq_len + 1`` tokens starting every ``stride`` tokens (``stride = seq_len``: non-overlapping);
each window scores only the targets no earlier window scored, so every token after the first
is scored exactly once, with the most context a window of that stride gives. A last window
ending at the stream's end covers the tail when asked (evaluation). A 2-D block of examples
is used as is, one window per example. Windows are views: a memory-mapped stream of any size
is read only batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import UsageError
from ..registry.contracts import TokenSplit


@dataclass
class Batch:
    inputs: torch.Tensor  # LongTensor[B, N]
    targets: torch.Tensor  # LongTensor[B, N]; targets[b, t] is the token after inputs[b, t]
    mask: torch.Tensor  # BoolTensor[B, N]; True where the target is scored


@dataclass
class Windows:
    """Windows over a split. Streams: ``starts`` and ``first_scored`` per window; examples: rows."""

    source: torch.Tensor  # 1-D stream or 2-D [M, seq_len + 1] examples
    seq_len: int
    loss_mask: torch.Tensor | None  # same shape as source: True marks tokens scored as targets
    starts: torch.Tensor | None = None  # [M] window start offsets (streams)
    first_scored: torch.Tensor | None = None  # [M] index within the window of its first scored target

    def __len__(self) -> int:
        return int(self.starts.shape[0]) if self.starts is not None else int(self.source.shape[0])

    @property
    def is_stream(self) -> bool:
        return self.starts is not None

    def take(self, index: torch.Tensor) -> Batch:
        """The windows at ``index`` (a LongTensor) as a batch of int64 tensors."""
        n = self.seq_len
        if self.starts is None:
            rows = self.source[index].long()
            mask = self.loss_mask[index, 1:] if self.loss_mask is not None else torch.ones(len(index), n, dtype=torch.bool)
            return Batch(rows[:, :-1], rows[:, 1:], mask)
        positions = self.starts[index, None] + torch.arange(n + 1)
        rows = self.source[positions].long()
        mask = torch.arange(n)[None, :] >= self.first_scored[index, None]
        if self.loss_mask is not None:
            mask = mask & self.loss_mask[positions[:, 1:]]
        return Batch(rows[:, :-1], rows[:, 1:], mask)

    def all(self) -> Batch:
        return self.take(torch.arange(len(self)))

    def scored_per_window(self) -> torch.Tensor:
        if self.starts is None:
            if self.loss_mask is None:
                return torch.full((len(self),), self.seq_len)
            return self.loss_mask[:, 1:].sum(dim=1)
        if self.loss_mask is None:
            return self.seq_len - self.first_scored
        # scored targets of window m lie at stream positions starts + first_scored + 1 ... starts + seq_len
        cum = torch.cat([torch.zeros(1, dtype=torch.long), self.loss_mask.long().cumsum(0)])
        return cum[self.starts + self.seq_len + 1] - cum[self.starts + self.first_scored + 1]

    @property
    def scored_tokens(self) -> int:
        return int(self.scored_per_window().sum())

    def select(self, index: torch.Tensor) -> "Windows":
        """The windows at ``index`` (a LongTensor), as Windows (views: nothing is read)."""
        if self.starts is None:
            mask = self.loss_mask[index] if self.loss_mask is not None else None
            return Windows(self.source[index], self.seq_len, mask)
        return Windows(self.source, self.seq_len, self.loss_mask, self.starts[index], self.first_scored[index])

    def head(self, count: int) -> "Windows":
        if self.starts is None:
            mask = self.loss_mask[:count] if self.loss_mask is not None else None
            return Windows(self.source[:count], self.seq_len, mask)
        return Windows(self.source, self.seq_len, self.loss_mask, self.starts[:count], self.first_scored[:count])


def make_windows(split: TokenSplit, seq_len: int, cover_tail: bool = False, stride: int | None = None,
                 where: str = "split") -> Windows:
    """Cut ``split`` into windows of ``seq_len`` inputs every ``stride`` tokens (default: ``seq_len``).

    ``cover_tail`` adds a last window ending at the end of the stream, so every target is scored
    (evaluation); training uses whole strides only.
    """
    tokens, mask = split.tokens, split.loss_mask
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise UsageError(f"eval stride {stride} must be between 1 and seq_len {seq_len}")
    if mask is not None and mask.shape != tokens.shape:
        raise UsageError(f"{where}: loss_mask shape {tuple(mask.shape)} differs from tokens {tuple(tokens.shape)}")
    if tokens.dim() == 2:
        if tokens.shape[1] != seq_len + 1:
            raise UsageError(f"{where}: examples hold {tokens.shape[1]} tokens, but seq_len {seq_len} needs {seq_len + 1}")
        return Windows(tokens, seq_len, mask)
    if tokens.dim() != 1:
        raise UsageError(f"{where}: tokens must be 1-D (a stream) or 2-D (examples), got {tokens.dim()}-D")
    total = int(tokens.shape[0])
    if total < seq_len + 1:
        raise UsageError(f"{where}: {total} tokens is fewer than one window of seq_len + 1 = {seq_len + 1}")
    starts = torch.arange(0, total - seq_len, stride)
    if cover_tail and int(starts[-1]) + seq_len + 1 < total:
        starts = torch.cat([starts, torch.tensor([total - seq_len - 1])])
    # window m scores the targets after the last one window m-1 scored
    previous_end = torch.cat([torch.tensor([0]), starts[:-1] + seq_len])  # stream index of the last scored target
    first_scored = (previous_end - starts).clamp(min=0)
    return Windows(tokens, seq_len, mask, starts, first_scored)


def limit_windows(windows: Windows, max_tokens: int = 0, max_windows: int = 0) -> Windows:
    """The leading windows holding at most ``max_tokens`` scored tokens and ``max_windows`` windows (0: no cap)."""
    count = len(windows)
    if max_windows:
        count = min(count, max_windows)
    if max_tokens:
        scored = windows.scored_per_window()[:count].cumsum(0)
        count = max(1, int((scored <= max_tokens).sum()))
    return windows.head(count) if count < len(windows) else windows


def training_batches(windows: Windows, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
    """Endless batches in a seeded order: the same windows in the same order for every model.

    Each pass over the data is a fresh permutation; a final incomplete batch is dropped.
    ``start`` skips that many batches without reading them (a resumed cell continues the order).
    """
    if len(windows) < batch_size:
        raise UsageError(f"training split has {len(windows)} windows, fewer than batch_size {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    per_pass = len(windows) // batch_size
    skip_passes, skip = divmod(start, per_pass)
    for _ in range(skip_passes):
        torch.randperm(len(windows), generator=gen)
    while True:
        order = torch.randperm(len(windows), generator=gen)
        for first in range(skip * batch_size, per_pass * batch_size, batch_size):
            yield windows.take(order[first : first + batch_size])
        skip = 0


def eval_batches(windows: Windows, batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(windows), batch_size):
        yield windows.take(torch.arange(start, min(start + batch_size, len(windows))))
