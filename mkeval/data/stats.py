"""Split statistics for ``mkeval data``: documents, lines, words, bytes, tokens, vocabulary size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..protocol import Protocol
from ..registry.manager import Registry, get_registry
from ..registry.contracts import DataRequest
from .text import apply_split_map, canonical_split, parse_split_map


def split_statistics(dataset: str, split: str | None = None, data_dir: str | Path | None = None,
                     tokenizer: str = "word", split_map: str | dict[str, str] | None = None, seq_len: int = 128,
                     registry: Registry | None = None) -> dict[str, Any]:
    """Statistics of each split of ``dataset`` as a run with the default budgets would tokenize it
    (whole splits, except for streamed corpora, which are read up to the default token budgets)."""
    spec = (registry or get_registry()).get("dataset", dataset, option="mkeval data")
    path = Path(data_dir) if data_dir is not None else None
    if path is not None and not path.is_dir():
        raise UsageError(f"--data-dir: {path} is not a directory")
    wanted = [canonical_split(split)] if split else ["train", "valid", "test"]
    for name in wanted:
        if name not in ("train", "valid", "test"):
            raise UsageError(f"--split: unknown split {split!r}; splits are train, valid (validation), test")
    mapping = parse_split_map(split_map, allow_test=True)  # statistics only: nothing is trained or selected
    request = DataRequest(seq_len=seq_len, train_tokens=Protocol().train_tokens, data_dir=path, tokenizer=tokenizer,
                          split_map=mapping)
    data = spec.load(request)
    data = data if spec.maps_splits else apply_split_map(data, mapping)
    out: dict[str, Any] = {"dataset": dataset, "tokenizer": data.info.get("tokenizer", "(synthetic ids)"),
                           "vocab_size": data.vocab_size, "splits": {}}
    for name in wanted:
        s = data.splits[name]
        info = dict(s.info)
        if "tokens" not in info or s.tokens.dim() == 2:
            info["tokens"] = int(s.loss_mask[..., 1:].sum() if s.loss_mask is not None else s.tokens.numel() - 1)
        info.setdefault("source_split", name)
        info["vocab_size"] = data.vocab_size
        out["splits"][name] = info
    return out
