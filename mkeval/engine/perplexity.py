"""Word perplexity and bits per byte as lm-evaluation-harness defines them, on mkeval's documents.

lm-eval's ``wikitext`` task scores each document with ``loglikelihood_rolling``: the document's
tokens (no end-of-document token among the targets) in disjoint windows of ``max_length``
tokens, the first token predicted from the end-of-document token alone, and no context carried
over from the previous document. Each document contributes ``(loglikelihood, words)`` with
``words = len(re.split(r"\\s+", doc))`` and ``(loglikelihood, bytes)`` with
``bytes = len(doc.encode("utf-8"))``; ``word_perplexity = exp(-sum ll / sum words)`` and
``bits_per_byte = -sum ll / sum bytes / ln 2`` (``lm_eval.api.metrics.weighted_perplexity`` and
``bits_per_byte``).

``document_nlls`` scores documents that way with mkeval's own windows (``batching.make_windows``
over ``[eos] + document``, which are lm-eval's rolling windows: see ``tests/test_perplexity.py``),
``lm_eval_text_metrics`` turns the sums into the two numbers. The counts are written by hand
because lm-eval keeps them inside its wikitext task's ``process_results``, not as a function.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

_WHITESPACE = re.compile(r"\s+")


def lm_eval_words(doc: str) -> int:
    """lm-eval's word count: ``re.split(r"\\s+", doc)`` pieces, so leading or trailing whitespace adds
    an empty piece each and an empty document counts 1 (``str.split`` counts neither)."""
    return len(_WHITESPACE.split(doc))


def lm_eval_bytes(doc: str) -> int:
    """UTF-8 bytes of the document, every character included (the same as mkeval's ``bytes``)."""
    return len(doc.encode("utf-8"))


def lm_eval_text_metrics(nll_per_document: Iterable[float], words: int | Iterable[int],
                         nbytes: int | Iterable[int]) -> tuple[float, float]:
    """``(word_perplexity, bits_per_byte)`` from per-document NLLs (nats) and lm-eval's word and byte
    counts (totals, or one per document), exactly as lm-eval aggregates them."""
    nll = math.fsum(nll_per_document)
    words = words if isinstance(words, int) else sum(words)
    nbytes = nbytes if isinstance(nbytes, int) else sum(nbytes)
    if words <= 0 or nbytes <= 0:
        raise ValueError(f"word and byte counts must be positive, got {words} words and {nbytes} bytes")
    per_word = nll / words
    return (math.exp(per_word) if per_word < 700 else math.inf), nll / nbytes / math.log(2)


def split_text_metrics(model: Any, split: Any, eos_id: int, seq_len: int, batch_size: int, precision: Any,
                       device: Any) -> tuple[float | None, float | None]:
    """``(word_perplexity, bits_per_byte)`` of a tokenized text split (``mkeval.data.text``'s ``TokenSplit``) in
    lm-eval's definition: every document scored on its own (``document_nlls``), lm-eval's word count.
    ``(None, None)`` for a split without text statistics (token-id data) or without text."""
    info = split.info
    if "lm_eval_words" not in info or not info.get("bytes"):
        return None, None
    nlls = document_nlls(model, documents_from_stream(split.tokens, eos_id), seq_len, eos_id, batch_size,
                         precision, device)
    return lm_eval_text_metrics(nlls, info["lm_eval_words"], info["bytes"])


def documents_from_stream(tokens: Any, eos_id: int) -> list[Any]:
    """A split's documents (1-D tensors, views of the stream) back from ``[eos] d1 [eos] d2 [eos] ...``
    (``mkeval.data.text``'s layout). A document whose own tokens include ``eos_id`` (only if its text
    spells the separator, e.g. a literal ``<eos>``) comes back as two documents."""
    import torch

    stream = torch.as_tensor(tokens)
    if stream.ndim != 1 or len(stream) == 0 or int(stream[0]) != eos_id:
        raise ValueError("the stream does not start with the end-of-document token")
    bounds = (stream == eos_id).nonzero().flatten().tolist()
    if bounds[-1] != len(stream) - 1:  # a stream cut at a budget ends inside a document
        bounds.append(len(stream))
    return [stream[a + 1: b] for a, b in zip(bounds[:-1], bounds[1:])]


def document_windows(doc: Any, seq_len: int, eos_id: int) -> Any:
    """The windows ``document_nlls`` scores ``doc`` in, as a ``batching.Batch`` (inputs, targets, mask):
    the stream ``[eos] + doc`` cut by ``make_windows`` every ``min(seq_len, len(doc))`` tokens, with a
    last window ending at the document's end."""
    import torch

    from .batching import make_windows
    from ..registry.contracts import TokenSplit

    tokens = torch.cat([torch.tensor([eos_id]), torch.as_tensor(doc, dtype=torch.long)])
    return make_windows(TokenSplit(tokens), min(seq_len, len(doc)), cover_tail=True).all()


def document_nlls(model: Any, documents: Sequence[Any], seq_len: int, eos_id: int, batch_size: int,
                  precision: Any, device: Any) -> list[float]:
    """Each document's summed NLL (nats) in lm-eval's rolling windows, computed with mkeval's windows.

    A document ``d`` is the stream ``[eos] + d`` cut by ``make_windows`` into windows of ``seq_len``
    inputs every ``seq_len`` tokens, with a last window ending at the document's end: each token
    of ``d`` is a target once, the end-of-document token never; a shorter document is one window.
    Windows of all documents are batched together (right-padded, so padding follows every scored
    position of a causal model). Empty documents score 0, as in lm-eval.
    """
    import torch
    import torch.nn.functional as F

    from .precision import autocast

    rows: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (document, inputs, targets, mask)
    for d, doc in enumerate(documents):
        if len(doc) == 0:
            continue
        batch = document_windows(doc, seq_len, eos_id)
        rows.extend((d, batch.inputs[m], batch.targets[m], batch.mask[m]) for m in range(batch.inputs.shape[0]))
    totals = [0.0] * len(documents)
    # short documents (a line of PTB is ~20 tokens) are packed many to a forward pass, longest first, up
    # to the tokens of one evaluation batch; the sums do not depend on how rows are batched
    rows.sort(key=lambda r: -r[1].shape[0])
    budget = batch_size * seq_len
    chunks, start = [], 0
    while start < len(rows):
        count = max(1, budget // rows[start][1].shape[0])
        chunks.append(rows[start: start + count])
        start += count
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in chunks:
                width = max(r[1].shape[0] for r in chunk)
                inputs = torch.zeros(len(chunk), width, dtype=torch.long)
                targets = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.bool)
                for b, (_, x, y, m) in enumerate(chunk):
                    inputs[b, : len(x)], targets[b, : len(y)], mask[b, : len(m)] = x, y, m
                with autocast(precision, device):
                    logits = model(inputs.to(device))
                losses = F.cross_entropy(logits.float().flatten(0, 1), targets.to(device).flatten(),
                                         reduction="none").view(len(chunk), width).double().cpu()
                for b, (d, *_rest) in enumerate(chunk):
                    totals[d] += float(losses[b][mask[b]].sum())
    finally:
        model.train(was_training)
    return totals
