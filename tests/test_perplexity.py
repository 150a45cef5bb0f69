"""Word perplexity and bits per byte in lm-evaluation-harness's definition, against lm-eval's own code."""

import json
import math
import random

import pytest
import torch
from checkpoint_helpers import TEXT, fitted_tokenizer, trained_model
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mkeval.engine.perplexity import (document_nlls, document_windows, documents_from_stream, lm_eval_bytes,
                               lm_eval_text_metrics, lm_eval_words)

DOCS = [" = Robert Boulter = ", "", " ", "plain words here", "  two  leading and trailing  ",
        "tabs\tand\nnewlines\n", "naïve café ≈ 日本", " = = Career = = \n \n Robert Boulter is an English actor . \n"]


def test_counts_are_those_of_lm_eval_wikitext_task():
    for doc in DOCS + TEXT:
        counts = process_results({"page": doc}, [-1.0])  # lm-eval's own counting, on the same text
        assert counts["word_perplexity"] == (-1.0, lm_eval_words(doc))
        assert counts["bits_per_byte"] == (-1.0, lm_eval_bytes(doc))
    assert lm_eval_words(" = Robert Boulter = ") == 6 and len(" = Robert Boulter = ".split()) == 4
    assert lm_eval_words("") == 1


def test_metrics_are_lm_eval_aggregations_of_the_same_nlls():
    rng = random.Random(0)
    docs = DOCS + TEXT
    nlls = [rng.uniform(0, 300) for _ in docs]
    items = [process_results({"page": d}, [-nll]) for d, nll in zip(docs, nlls)]
    word_ppl, bpb = lm_eval_text_metrics(nlls, [lm_eval_words(d) for d in docs], [lm_eval_bytes(d) for d in docs])
    assert word_ppl == pytest.approx(weighted_perplexity([i["word_perplexity"] for i in items]), rel=1e-12)
    assert bpb == pytest.approx(bits_per_byte([i["bits_per_byte"] for i in items]), rel=1e-12)
    totals = lm_eval_text_metrics(nlls, sum(map(lm_eval_words, docs)), sum(map(lm_eval_bytes, docs)))
    assert totals == (word_ppl, bpb)
    assert lm_eval_text_metrics([1e6], 1, 1)[0] == math.inf


@pytest.mark.parametrize("seq_len", [1, 3, 8])
def test_mkeval_windows_are_lm_eval_rolling_windows(seq_len):
    eos = 99
    for length in [1, 2, 3, 7, 8, 9, 16, 17, 24, 25, 30]:
        doc = list(range(length))
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(doc, eos, seq_len, context_len=1)]
        ours = document_windows(doc, seq_len, eos)
        assert len(theirs) == ours.inputs.shape[0], (length, seq_len)
        for (context, continuation), x, y, m in zip(theirs, ours.inputs, ours.targets, ours.mask):
            # lm-eval feeds (context + continuation)[:-1] and scores the last len(continuation) positions
            assert x.tolist() == (context + continuation)[:-1]
            assert y[m].tolist() == continuation
            assert m.tolist() == [False] * (len(x) - len(continuation)) + [True] * len(continuation)


def test_documents_come_back_from_the_stream():
    tok = fitted_tokenizer("word")
    docs = [tok.encode(line) for line in TEXT[:10]]
    stream = [tok.eos_id] + [t for d in docs for t in d + [tok.eos_id]]
    assert [d.tolist() for d in documents_from_stream(torch.tensor(stream), tok.eos_id)] == docs
    assert [d.tolist() for d in documents_from_stream(stream[:-3], tok.eos_id)] == docs[:-1] + [docs[-1][:-2]]
    with pytest.raises(ValueError):
        documents_from_stream(stream[1:], tok.eos_id)


@pytest.mark.parametrize("name", ["transformer", "bk"])
def test_document_nlls_of_short_documents_are_one_forward_pass(name):
    from mkeval.registry.manager import get_registry

    tok = fitted_tokenizer("byte")
    model = trained_model(name, tok, seq_len=64, steps=2)
    docs = [tok.encode(line) for line in ["Answer: A", "", "The quick brown fox .", "x"]]
    fp32 = get_registry().get("precision", "fp32")
    ours = document_nlls(model, docs, 64, tok.eos_id, batch_size=3, precision=fp32, device=torch.device("cpu"))
    assert ours[1] == 0.0  # an empty document, as in lm-eval (no window)
    for doc, nll in zip(docs, ours):
        if doc:
            ids = torch.tensor([[tok.eos_id, *doc]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)
            assert nll == pytest.approx(-float(logp[0, torch.arange(len(doc)), ids[0, 1:]].sum()), abs=1e-4)


def test_text_statistics_count_lm_eval_words(tmp_path, monkeypatch, caplog):
    import logging

    from mkeval.data.text import TextSplit, tokenize_split

    caplog.set_level(logging.INFO, logger="mkeval.data.text")

    monkeypatch.setenv("MKEVAL_CACHE", str(tmp_path))
    tok = fitted_tokenizer("word")
    split = TextSplit(read=lambda: iter(DOCS), fingerprint="docs-v1", origin="test")
    info = tokenize_split("toy", "test", split, tok, None, tmp_path).info
    assert info["lm_eval_words"] == sum(map(lm_eval_words, DOCS))
    assert info["words"] == sum(len(d.split()) for d in DOCS)
    assert info["bytes"] == sum(map(lm_eval_bytes, DOCS))
    # a cache entry written before lm_eval_words existed is rebuilt, not read without it
    meta_path = next(tmp_path.glob("test-*.json"))
    meta = json.loads(meta_path.read_text())
    del meta["lm_eval_words"]
    meta_path.write_text(json.dumps(meta))
    assert tokenize_split("toy", "test", split, tok, None, tmp_path).info["lm_eval_words"] == info["lm_eval_words"]
    assert "predates a statistic" in caplog.text


def test_split_metrics_need_text_statistics():
    from mkeval.engine.perplexity import split_text_metrics
    from mkeval.registry.contracts import TokenSplit

    split = TokenSplit(torch.tensor([0, 1, 2, 0]), info={"words": 2})  # token-id data has no lm-eval counts
    assert split_text_metrics(None, split, 0, 8, 4, None, torch.device("cpu")) == (None, None)
