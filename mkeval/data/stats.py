"""Split statistics for ``mkeval data``: documents, lines, words, bytes, tokens, vocabulary size.

Statistics of a split need only that split: splits that are not on disk are listed, not
required. A word or BPE vocabulary is fitted on train, else on valid (``vocab_source`` says
which), and never on test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..protocol import Protocol
from ..registry.manager import Registry, get_registry
from .text import ROLES, StatisticsRequest, apply_split_map, canonical_split, parse_split_map
from .tokenizers import needs_training, parse_spec


def split_statistics(dataset: str, split: str | None = None, data_dir: str | Path | None = None,
                     tokenizer: str = "word", split_map: str | dict[str, str] | None = None, seq_len: int = 128,
                     registry: Registry | None = None) -> dict[str, Any]:
    """Statistics of each split of ``dataset`` on disk (or of ``split`` only), as a run with the default
    budgets would tokenize it (whole splits, except for streamed corpora, which are read up to the
    default token budgets)."""
    spec = (registry or get_registry()).get("dataset", dataset, option="mkeval data")
    path = Path(data_dir) if data_dir is not None else None
    if path is not None and not path.is_dir():
        raise UsageError(f"--data-dir: {path} is not a directory")
    wanted = (canonical_split(split),) if split else ROLES
    for name in wanted:
        if name not in ROLES:
            raise UsageError(f"--split: unknown split {split!r}; splits are train, valid (validation, dev), test")
    mapping = parse_split_map(split_map, allow_test=True)  # statistics only: nothing is trained or selected
    request = StatisticsRequest(seq_len=seq_len, train_tokens=Protocol().train_tokens, data_dir=path,
                                tokenizer=tokenizer, split_map=mapping, splits=wanted, required=split is not None)
    data = spec.load(request)
    data = data if spec.maps_splits else apply_split_map(data, mapping)
    absent = {name: looked for name, looked in data.info.get("absent_splits", {}).items() if name in wanted}
    absent.update({name: [] for name in wanted if name not in data.splits and name not in absent})
    no_vocabulary = data.info.get("no_vocabulary")
    vocab_size = None if no_vocabulary else data.vocab_size
    source = data.info.get("vocabulary_fitted_on")
    out: dict[str, Any] = {"dataset": dataset, "tokenizer": data.info.get("tokenizer", "(synthetic ids)"),
                           "vocab_size": vocab_size, "vocab_source": source,
                           "vocab_note": no_vocabulary or _vocabulary_note(source, mapping, tokenizer),
                           "splits": {}, "absent_splits": absent}
    # without a vocabulary, word tokens are still words + one <eos> per document; BPE tokens are unknown
    tokens_known = not no_vocabulary or parse_spec(tokenizer)[0] == "word"
    for name in wanted:
        if name not in data.splits:
            continue
        s = data.splits[name]
        info = dict(s.info)
        if "tokens" not in info or s.tokens.dim() == 2:
            info["tokens"] = int(s.loss_mask[..., 1:].sum() if s.loss_mask is not None else s.tokens[..., 1:].numel())
        info.setdefault("source_split", name)
        info["vocab_size"] = vocab_size
        if no_vocabulary:
            info["unk_tokens"] = None
            if not tokens_known:
                info["tokens"] = None
        out["splits"][name] = info
    return out


def _vocabulary_note(source: str | None, mapping: dict[str, str], tokenizer: str) -> str | None:
    """Why a fitted vocabulary came from a split other than train, if it did."""
    if source is None or source == "train" or not needs_training(tokenizer):
        return None
    train = mapping.get("train", "train")
    why = (f"--split-map train={source}" if train == source else
           "train is mapped onto test" if train == "test" else f"no {train} split on disk")
    return f"the {tokenizer} vocabulary is fitted on {source} ({why}); it is never fitted on test"
