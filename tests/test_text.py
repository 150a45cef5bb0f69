"""Text corpora: official statistics, readers' errors, the token cache, streaming, text metrics."""

import gzip
import json
import math
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mkeval
from mkeval import DataRequest, UsageError
from mkeval.data.tokenizers import make_tokenizer, fit_state

from conftest import shared_data_or_skip
from helpers import bigram_spec


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MKEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _load(registry, name, root, **kw):
    kw.setdefault("split_map", {"train": "valid"})
    return registry.get("dataset", name).load(DataRequest(seq_len=32, train_tokens=1024, data_dir=Path(root), **kw))


# ------------------------------------------------------------------ official statistics
@pytest.mark.parametrize("name,valid,test", [("ptb", 73_760, 82_430), ("wikitext-2", 217_646, 245_569)])
def test_word_tokenizer_reproduces_the_official_token_counts(registry, name, valid, test):
    root = shared_data_or_skip()
    data = _load(registry, name, root)
    assert data.splits["valid"].info["tokens"] == valid
    assert data.splits["test"].info["tokens"] == test
    # the stream is <eos> + every line's words + <eos> per line: each counted token is a target once
    assert data.splits["test"].tokens.shape[0] == test + 1
    assert data.info["split_map"] == {"train": "valid", "valid": "valid", "test": "test"}


def test_ptb_vocabulary_comes_from_the_train_split(registry):
    root = shared_data_or_skip()
    data = _load(registry, "ptb", root)
    words = {w for line in (root / "ptb" / "ptb.valid.txt").read_text().splitlines() for w in line.split()}
    assert data.vocab_size == len(words | {"<eos>", "<unk>"})


# ------------------------------------------------------------------ tokenizers
def test_word_tokenizer_maps_unseen_words_to_unk():
    tok = make_tokenizer("word", fit_state("word", ["a b a", "c"]))
    assert tok.encode("a c z") == [0, 2, tok.info["unk_id"]]
    assert tok.vocab_size == 5 and tok.eos_id == 4


def test_byte_tokenizer_is_utf8():
    tok = make_tokenizer("byte")
    assert tok.encode("é!") == list("é!".encode()) and tok.vocab_size == 256


def test_bpe_is_trained_offline_to_a_fixed_size_and_deterministic():
    docs = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(200)]
    a = make_tokenizer("bpe:300", fit_state("bpe:300", docs))
    b = make_tokenizer("bpe:300", fit_state("bpe:300", docs))
    assert a.vocab_size == 300 and a.fingerprint == b.fingerprint
    ids = a.encode("the lazy fox")
    assert len(ids) < len("the lazy fox") and max(ids) < 300


def test_local_hugging_face_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    state = fit_state("bpe:280", [f"hello world {i}" for i in range(100)])
    from tokenizers import Tokenizer

    fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(state), eos_token="<eos>")
    fast.save_pretrained(tmp_path / "tok")
    tok = make_tokenizer(str(tmp_path / "tok"))
    assert tok.encode("hello world") == fast("hello world", add_special_tokens=False)["input_ids"]
    assert tok.eos_id == fast.eos_token_id
    with pytest.raises(UsageError, match="not a local Hugging Face tokenizer"):
        make_tokenizer(str(tmp_path / "missing"))


# ------------------------------------------------------------------ layouts and bad input
def _ptb(root, valid="a b c\nb c d\n", test="c d e\n"):
    d = root / "ptb"
    d.mkdir(parents=True)
    (d / "ptb.valid.txt").write_text(valid)
    (d / "ptb.test.txt").write_text(test)
    return root


def test_missing_split_lists_the_files_looked_for(registry, tmp_path):
    _ptb(tmp_path)
    with pytest.raises(UsageError) as exc:
        _load(registry, "ptb", tmp_path, split_map={})
    assert "no 'train' split" in str(exc.value) and "ptb.train.txt" in str(exc.value)
    assert "--split-map" in str(exc.value)


def test_empty_file_is_an_error_naming_it(registry, tmp_path):
    _ptb(tmp_path, valid="")
    with pytest.raises(UsageError, match=r"ptb\.valid\.txt: the file is empty"):
        _load(registry, "ptb", tmp_path)


def test_undecodable_bytes_name_file_line_and_offset(registry, tmp_path):
    _ptb(tmp_path)
    (tmp_path / "ptb" / "ptb.test.txt").write_bytes(b"ok line\nbad \xff byte\n")
    with pytest.raises(UsageError, match=r"ptb\.test\.txt:2: not valid UTF-8 at byte offset 12"):
        _load(registry, "ptb", tmp_path)


def _c4(root, lines, name="c4-train.00000-of-01024.json.gz", valid=True):
    d = root / "c4"
    d.mkdir(parents=True, exist_ok=True)
    data = "".join(lines).encode()
    (d / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    if valid:
        (d / "c4-validation.00000-of-00008.json.gz").write_bytes(
            gzip.compress(b"".join(json.dumps({"text": f"valid doc {i}"}).encode() + b"\n" for i in range(50))))
    return root


def test_json_line_without_text_names_file_and_line(registry, tmp_path):
    _c4(tmp_path, ['{"text": "fine"}\n', '{"url": "x"}\n'])
    with pytest.raises(UsageError, match=r"c4-train\.00000-of-01024\.json\.gz:2: no 'text' field"):
        _load(registry, "c4", tmp_path, split_map={"test": "valid"})


def test_truncated_gzip_shard_is_an_error(registry, tmp_path):
    _c4(tmp_path, [json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(3000)])
    shard = tmp_path / "c4" / "c4-train.00000-of-01024.json.gz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(UsageError, match="truncated or corrupt gzip stream"):
        registry.get("dataset", "c4").load(DataRequest(seq_len=32, train_tokens=10**9, data_dir=tmp_path,
                                                       split_map={"test": "valid"}))


def test_truncated_zstd_shard_is_an_error(registry, tmp_path):
    import zstandard

    d = tmp_path / "pile"
    (d / "train").mkdir(parents=True)
    data = "".join(json.dumps({"text": f"pile doc {i} " * 30}) + "\n" for i in range(2000)).encode()
    z = zstandard.ZstdCompressor().compress(data)
    (d / "train" / "00.jsonl.zst").write_bytes(z[: len(z) - 5])
    (d / "val.jsonl.zst").write_bytes(z)
    (d / "test.jsonl.zst").write_bytes(z)
    with pytest.raises(UsageError, match=r"00\.jsonl\.zst: truncated or corrupt zstd stream"):
        registry.get("dataset", "pile").load(DataRequest(seq_len=32, train_tokens=10**9, data_dir=tmp_path))


def test_offline_with_nothing_cached_says_what_to_place_where(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UsageError) as exc:
        registry.get("dataset", "ptb").load(DataRequest(seq_len=32, train_tokens=1024))
    msg = str(exc.value)
    assert "--data-dir ROOT" in msg and "ROOT/ptb/" in msg and "ptb.train.txt" in msg


# ------------------------------------------------------------------ cache
def test_stale_and_corrupt_cache_entries_are_rebuilt(registry, tmp_path, cache, caplog):
    _ptb(tmp_path)
    first = _load(registry, "ptb", tmp_path)
    entry = Path(first.splits["test"].info["cache"])
    expected = first.splits["test"].tokens.clone()  # the stream is a view of the file
    # corrupt: flip one token in the cached stream
    raw = bytearray(entry.read_bytes())
    raw[4] ^= 0xFF
    entry.write_bytes(bytes(raw))
    again = _load(registry, "ptb", tmp_path)
    assert torch.equal(again.splits["test"].tokens, expected)
    assert "stale or corrupt" in caplog.text
    # stale: the source changed, so a new entry is built from the new text
    (tmp_path / "ptb" / "ptb.test.txt").write_text("c d e\nc c\n")
    changed = _load(registry, "ptb", tmp_path)
    assert changed.splits["test"].info["tokens"] == 4 + 3 and changed.splits["test"].info["cache"] != str(entry)


# ------------------------------------------------------------------ streaming within a budget
def test_streaming_a_source_larger_than_the_budget_keeps_memory_flat(tmp_path):
    script = textwrap.dedent("""
        import json, resource, sys
        from pathlib import Path
        import mkeval
        from mkeval import DataRequest
        root = Path(sys.argv[1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = mkeval.get_registry().get("dataset", "c4").load(DataRequest(
            seq_len=64, train_tokens=200_000, eval_tokens=2_000, data_dir=root, tokenizer="byte",
            split_map={"test": "valid"}))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kb": after - before, "train": data.splits["train"].info}))
    """)

    def run(size_mb):
        root = tmp_path / f"r{size_mb}"
        d = root / "c4"
        d.mkdir(parents=True)
        line = (json.dumps({"text": "streaming test document with some words " * 40}) + "\n").encode()
        block = line * ((1 << 20) // len(line) + 1)  # about 1 MiB
        with open(d / "c4-train.00000-of-01024.json", "wb") as f:
            for _ in range(size_mb):
                f.write(block)
        (d / "c4-validation.00000-of-00008.json").write_bytes(line * 50)
        env = {**os.environ, "MKEVAL_CACHE": str(root / "cache")}
        proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, env=env)
        (d / "c4-train.00000-of-01024.json").unlink()  # do not leave hundreds of MB in /tmp
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    small, large = run(20), run(400)
    assert large["train"]["stopped_at_budget"] and small["train"]["stopped_at_budget"]
    assert large["train"]["tokens"] == small["train"]["tokens"]  # the same whole documents within the budget
    assert large["train"]["tokens"] >= 200_000 + 64 + 1 - 1
    # reading 400 MB instead of 20 MB costs no memory: growth within 20 MiB of the small run's
    assert large["growth_kb"] - small["growth_kb"] < 20 * 1024


# ------------------------------------------------------------------ comparable metrics
def test_word_perplexity_and_bits_per_byte_by_hand(registry, tmp_path):
    valid = "".join(f"the cat sat on mat {i % 7}\n" for i in range(200))
    test = "the cat sat\non the mat 3\nnaïve café\n"
    _ptb(tmp_path, valid=valid, test=test)
    registry.add(bigram_spec())
    protocol = mkeval.Protocol(batch_size=4, seq_lens=(8,), train_tokens=4 * 8 * 10, eval_interval=5,
                               warmup_steps=1)
    result = mkeval.run(models="bigram", datasets="ptb", data_dir=tmp_path, split_map="train=valid",
                        protocol=protocol, output_dir=tmp_path / "out", registry=registry, device="cpu")
    [r] = result.results
    lines = test.splitlines()
    words = sum(len(l.split()) for l in lines)
    nbytes = sum(len(l.encode("utf-8")) for l in lines)
    assert r.test_tokens == words + len(lines)  # every word and every <eos>
    # the NLL, recomputed independently: the bigram's logits depend on the current token only, so
    # the whole test stream can be scored as one sequence by the saved checkpoint
    from mkeval.engine.checkpoint import load_weights

    from helpers import Bigram

    model = Bigram(r.config["dataset"]["vocab_size"])
    load_weights(model, tmp_path / "out" / r.checkpoint, torch.device("cpu"))
    stream = registry.get("dataset", "ptb").load(mkeval.runner.data_request(
        protocol, 8, tmp_path, {"train": "valid"})).splits["test"].tokens.long()
    with torch.no_grad():
        logp = torch.log_softmax(model(stream[None, :-1])[0].double(), -1)
    token_nll = -logp.gather(1, stream[1:, None])[:, 0]
    nll = float(token_nll.sum())
    assert nll == pytest.approx(r.test_loss * r.test_tokens, rel=1e-6)
    # lm-evaluation-harness's definitions: each document (line) scored after <eos> with no <eos>
    # target of its own (for a bigram model: the stream's NLL without its <eos> targets), over
    # re.split(r"\s+") words and the documents' UTF-8 bytes
    eos = int(stream[0])
    doc_nll = float(token_nll[stream[1:] != eos].sum())
    lm_eval_words = sum(len(re.split(r"\s+", l)) for l in lines)
    assert lm_eval_words == words  # no line has leading or trailing spaces
    assert r.test_word_perplexity == pytest.approx(math.exp(doc_nll / lm_eval_words))
    assert r.test_bits_per_byte == pytest.approx(doc_nll / (nbytes * math.log(2)))
    assert r.config["dataset"]["info"]["split_map"]["train"] == "valid"
    assert r.config["dataset"]["info"]["warning"] == "splits train, valid read the same text"


def test_mkeval_data_prints_split_statistics(tmp_path):
    root = shared_data_or_skip()
    env = {**os.environ, "MKEVAL_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "mkeval", "data", "ptb", "--data-dir", str(root), "--split-map",
                           "train=valid", "--split", "test", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["splits"]["test"]
    lines = (root / "ptb" / "ptb.test.txt").read_text(encoding="utf-8").splitlines()
    assert stats["tokens"] == 82_430
    assert stats["documents"] == stats["lines"] == len(lines) == 3761
    assert stats["words"] == sum(len(l.split()) for l in lines)
    assert stats["bytes"] == sum(len(l.encode()) for l in lines)


def test_mkeval_data_on_synthetic_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkeval", "data", "markov", "--split", "test", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"]["test"]["tokens"] == 65_536
