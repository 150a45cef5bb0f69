"""Building models from the registry, and counting what they hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import PluginError, UsageError
from .registry import Registry, get_registry


def build_model(
    name: str,
    vocab_size: int,
    max_seq_len: int,
    size: str | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> nn.Module:
    """Build registered model ``name``; ``forward(LongTensor[B, N]) -> logits [B, N, vocab_size]``.

    ``seed`` (if given) seeds torch first, so the same seed gives the same weights.
    """
    spec = (registry or get_registry()).get("model", name, option="--models")
    if vocab_size <= 0:
        raise UsageError(f"vocab_size must be positive, got {vocab_size}")
    if max_seq_len <= 0:
        raise UsageError(f"max_seq_len must be positive, got {max_seq_len}")
    if spec.max_seq_len is not None and max_seq_len > spec.max_seq_len:
        raise UsageError(
            f"model {name!r} supports sequences up to {spec.max_seq_len} tokens; {max_seq_len} was asked for"
        )
    if size is None:
        size = spec.default_size
    if spec.sizes and size is not None and size not in spec.sizes:
        raise UsageError(f"model {name!r} has no size {size!r}; its sizes are {', '.join(spec.sizes)}")
    if seed is not None:
        torch.manual_seed(seed)
    model = spec.build(vocab_size=vocab_size, max_seq_len=max_seq_len, size=size, **options)
    if not isinstance(model, nn.Module):
        raise PluginError(f"model plugin {name!r}: build() returned {type(model).__name__}, not an nn.Module")
    return model


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_parameters(model: nn.Module) -> ParamCounts:
    """Unique parameters, and those in ``nn.Embedding`` modules (token and position tables).

    Tied weights are counted once; an output head tied to the embedding counts as embedding.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields shared tensors once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = 0
    emb_seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in emb_seen:
            emb_seen.add(id(module.weight))
            embedding += module.weight.numel()
    return ParamCounts(total=total, embedding=embedding)


def model_size_mb(model: nn.Module) -> float:
    """In-memory size of parameters and buffers, in MiB (2**20 bytes), shared storage counted once."""
    seen: set[tuple[int, int]] = set()
    nbytes = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        nbytes += t.untyped_storage().nbytes()
    return nbytes / 2**20
