"""The run's tokenizer: ``word``, ``byte``, ``bpe[:VOCAB]`` or a local Hugging Face tokenizer.

One tokenizer per run, identical for every model. ``word`` is the classic WikiText/PTB
protocol (vocabulary from the train split, ``<unk>`` for unseen words, ``<eos>`` after
each line); ``bpe`` is trained offline on the train split with the ``tokenizers`` library.
Every tokenizer has an end-of-document id that separates documents in a stream.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import UsageError

UNK, EOS = "<unk>", "<eos>"
DEFAULT_BPE_VOCAB = 8192


@dataclass
class Tokenizer:
    """Encodes one document at a time; ``fingerprint`` changes whenever the encoding could."""

    name: str
    vocab_size: int
    eos_id: int
    encode: Callable[[str], list[int]]
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    # ids and each token's (start, end) character span in the text (for span answers, e.g. SQuAD)
    encode_offsets: Callable[[str], tuple[list[int], list[tuple[int, int]]]] | None = None
    # what rebuilds it: the word list (word), the BPE JSON (bpe), the folder (hf), None (byte);
    # ``mkeval.engine.checkpoint`` writes it into a checkpoint as tokenizer.json
    state: Any = None
    decode: Callable[[list[int]], str] | None = None  # ids -> text (for generation)


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def word_vocabulary(train_docs: Iterable[str], max_vocab: int | None = None) -> list[str]:
    """Words of the train split in order of first appearance (the ``max_vocab - 2`` most frequent if capped)."""
    counts: dict[str, int] = {}
    for doc in train_docs:
        for w in doc.split():
            counts[w] = counts.get(w, 0) + 1
    words = list(counts)
    if max_vocab is not None and len(words) + 2 > max_vocab:
        keep = set(sorted(words, key=lambda w: (-counts[w], w))[: max_vocab - 2])
        words = [w for w in words if w in keep]
    return words


def word_tokenizer(words: list[str], name: str = "word") -> Tokenizer:
    """Whitespace words over a fixed vocabulary; unseen words map to ``<unk>``."""
    vocab = {w: i for i, w in enumerate(words)}
    for special in (UNK, EOS):
        vocab.setdefault(special, len(vocab))
    unk, eos = vocab[UNK], vocab[EOS]

    def encode(doc: str) -> list[int]:
        return [vocab.get(w, unk) for w in doc.split()]

    def encode_offsets(doc: str) -> tuple[list[int], list[tuple[int, int]]]:
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", doc)]
        return [vocab.get(doc[a:b], unk) for a, b in spans], spans

    itos = {i: w for w, i in vocab.items()}

    def decode(ids: list[int]) -> str:
        return " ".join(itos[i] for i in ids)

    return Tokenizer(name, len(vocab), eos, encode, _digest("word", words), {"unk_id": unk}, encode_offsets,
                     state=list(words), decode=decode)


def byte_tokenizer() -> Tokenizer:
    """UTF-8 bytes; documents are separated by the newline byte."""
    def encode_offsets(doc: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, spans = [], []
        for i, ch in enumerate(doc):
            b = ch.encode("utf-8")
            ids.extend(b)
            spans.extend([(i, i + 1)] * len(b))
        return ids, spans

    return Tokenizer("byte", 256, 10, lambda doc: list(doc.encode("utf-8")), _digest("byte-v1"),
                     encode_offsets=encode_offsets, decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"))


def train_bpe(train_docs: Iterable[str], vocab_size: int) -> str:
    """Train a byte-level BPE on the train split; returns the tokenizer as JSON."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_docs, trainer=trainer)
    return tok.to_str()


def bpe_tokenizer(state: str, name: str) -> Tokenizer:
    """A trained byte-level BPE (from ``train_bpe``'s JSON)."""
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(state)
    def encode_offsets(doc: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tok.encode(doc)
        return enc.ids, [tuple(o) for o in enc.offsets]

    return Tokenizer(name, tok.get_vocab_size(), tok.token_to_id(EOS), lambda doc: tok.encode(doc).ids,
                     _digest("bpe", state), {"trained_on": "train split"}, encode_offsets, state=state,
                     decode=lambda ids: tok.decode(ids, skip_special_tokens=False))


def hf_tokenizer(path: str) -> Tokenizer:
    """A local Hugging Face tokenizer (a folder, or a name already in the local cache)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--tokenizer {path!r}: not one of word, byte, bpe[:VOCAB], and not a local Hugging Face tokenizer "
            f"({exc.__class__.__name__}); give a folder holding tokenizer.json or tokenizer_config.json"
        ) from None
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if eos is None:
        raise UsageError(f"--tokenizer {path!r} has no end-of-text or separator token to separate documents")
    files = sorted(p for p in Path(path).glob("*") if p.is_file()) if Path(path).is_dir() else []
    fp = _digest("hf", path, [hashlib.sha256(p.read_bytes()).hexdigest() for p in files], len(tok))
    def encode_offsets(doc: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = tok(doc, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    return Tokenizer(f"hf:{path}", len(tok), eos, lambda doc: tok(doc, add_special_tokens=False)["input_ids"], fp,
                     encode_offsets=encode_offsets if getattr(tok, "is_fast", False) else None, state=str(path),
                     decode=lambda ids: tok.decode(ids))


def parse_spec(spec: str) -> tuple[str, int | None]:
    """``"bpe:4096"`` -> ``("bpe", 4096)``; checks the built-in names' arguments."""
    kind, _, arg = spec.partition(":")
    if kind in ("word", "bpe") and arg:
        if not arg.isdigit() or int(arg) < 3:
            raise UsageError(f"--tokenizer {spec!r}: the vocabulary size after ':' must be an integer >= 3")
        return kind, int(arg)
    if kind == "byte" and arg:
        raise UsageError("--tokenizer byte takes no argument")
    return kind, None


def needs_training(spec: str) -> bool:
    """Whether the tokenizer is fitted on the train split (``word`` and ``bpe``)."""
    return parse_spec(spec)[0] in ("word", "bpe")


def fit_state(spec: str, train_docs: Iterable[str]) -> Any:
    """What fitting ``spec`` on the train split produces (JSON-serialisable, cached by the caller)."""
    kind, arg = parse_spec(spec)
    if kind == "word":
        return word_vocabulary(train_docs, arg)
    if kind == "bpe":
        return train_bpe(train_docs, arg or DEFAULT_BPE_VOCAB)
    return None


def make_tokenizer(spec: str, state: Any = None) -> Tokenizer:
    """Tokenizer ``spec``; ``state`` is ``fit_state``'s result for ``word`` and ``bpe``."""
    kind, arg = parse_spec(spec)
    if kind == "word":
        return word_tokenizer(state, spec)
    if kind == "byte":
        return byte_tokenizer()
    if kind == "bpe":
        return bpe_tokenizer(state, f"bpe:{arg or DEFAULT_BPE_VOCAB}")
    return hf_tokenizer(spec)
