"""`mkeval data`: statistics of the splits on disk, the vocabulary's stated source (never test),
hints that never map onto test, and offline failures that come at once, with one message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkeval import DataRequest, UsageError, get_registry
from mkeval.cli import main
from mkeval.data import hub

from conftest import shared_data_or_skip

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@pytest.fixture(autouse=True)
def fresh_reachability():
    """Each test asks the (mocked) network itself: no answer remembered from another test."""
    hub._answers.clear()
    yield
    hub._answers.clear()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MKEVAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mkeval(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkeval", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **env})


def _lines(path: Path) -> list[str]:
    """The file's lines, read here without mkeval: one document per line, blank lines included."""
    text = path.read_bytes().decode("utf-8")
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def _word_tokens(lines: list[str]) -> int:
    """The word tokenizer's count: whitespace-separated words plus one <eos> per line."""
    return sum(len(line.split()) for line in lines) + len(lines)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long messages


# ------------------------------------------------------------------ the shared benchmark files
def test_ptb_statistics_need_only_the_splits_on_disk(tmp_path):
    root = shared_data_or_skip()
    valid, test = _lines(root / "ptb" / "ptb.valid.txt"), _lines(root / "ptb" / "ptb.test.txt")
    assert not (root / "ptb" / "ptb.train.txt").exists()  # the case this test is about

    proc = _mkeval("data", "ptb", "--data-dir", str(root), "--json", MKEVAL_CACHE=str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert set(stats["splits"]) == {"valid", "test"} and set(stats["absent_splits"]) == {"train"}
    assert str(root / "ptb" / "ptb.train.txt") in stats["absent_splits"]["train"]
    for name, lines in (("valid", valid), ("test", test)):
        row = stats["splits"][name]
        assert row["tokens"] == _word_tokens(lines)
        assert row["documents"] == row["lines"] == len(lines)
        assert row["words"] == sum(len(line.split()) for line in lines)
    assert (stats["splits"]["valid"]["tokens"], stats["splits"]["test"]["tokens"]) == (73_760, 82_430)  # MANIFEST
    # the vocabulary comes from valid: its size is valid's words (PTB writes <unk> itself) plus <unk> and <eos>,
    # and every test word valid lacks is <unk> in test
    valid_words = {w for line in valid for w in line.split()}
    assert stats["vocab_source"] == "valid" and "test" not in stats["vocab_source"]
    assert stats["vocab_size"] == len(valid_words | {"<unk>", "<eos>"})
    unk = sum(1 for line in test for w in line.split() if w not in valid_words or w == "<unk>")
    assert stats["splits"]["test"]["unk_tokens"] == unk
    assert "valid" in stats["vocab_note"] and "never fitted on test" in stats["vocab_note"]

    proc = _mkeval("data", "ptb", "--data-dir", str(root), MKEVAL_CACHE=str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    table = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert set(table) == {"valid", "test"}
    assert f"{_word_tokens(valid):,}" in table["valid"] and f"{_word_tokens(test):,}" in table["test"]
    assert "train: absent" in proc.stdout and "fitted on valid" in proc.stdout

    proc = _mkeval("data", "ptb", "--data-dir", str(root), "--split", "test", "--json",
                   MKEVAL_CACHE=str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert list(stats["splits"]) == ["test"] and stats["absent_splits"] == {}
    assert stats["splits"]["test"]["tokens"] == _word_tokens(test)
    assert stats["vocab_source"] == "valid"


# ------------------------------------------------------------------ small fixtures
def _ptb(root: Path, **splits: str) -> Path:
    (root / "ptb").mkdir(parents=True)
    for name, text in splits.items():
        (root / "ptb" / f"ptb.{name}.txt").write_text(text, encoding="utf-8")
    return root


def test_with_only_a_test_split_no_vocabulary_is_fitted(tmp_path, capsys):
    """Decision: the vocabulary is never fitted on test. With only test on disk, word token counts
    (words + one <eos> per line, which no vocabulary changes) are given; vocabulary size, <unk>
    counts and BPE token counts are null."""
    test = "the cat sat\n\na b c d\n"
    root = _ptb(tmp_path / "data", test=test)
    lines = _lines(root / "ptb" / "ptb.test.txt")
    assert main(["data", "ptb", "--data-dir", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["splits"]) == {"test"} and set(stats["absent_splits"]) == {"train", "valid"}
    assert stats["vocab_source"] is None and stats["vocab_size"] is None
    assert "never fitted on test" in stats["vocab_note"]
    row = stats["splits"]["test"]
    assert row["tokens"] == _word_tokens(lines) == 10 and row["unk_tokens"] is None and row["vocab_size"] is None

    assert main(["data", "ptb", "--data-dir", str(root), "--tokenizer", "bpe", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["vocab_source"] is None and stats["splits"]["test"]["tokens"] is None
    assert stats["splits"]["test"]["words"] == 7

    assert main(["data", "ptb", "--data-dir", str(root), "--tokenizer", "byte", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)  # a fixed vocabulary needs no split
    # byte tokens: each line's UTF-8 bytes plus one separator per line
    assert stats["vocab_size"] == 256
    assert stats["splits"]["test"]["tokens"] == sum(len(line.encode()) for line in lines) + len(lines)


def test_with_valid_and_test_the_vocabulary_comes_from_valid(tmp_path, capsys):
    root = _ptb(tmp_path / "data", valid="a b c\nb c d\n", test="a x y\nd d\n")
    assert main(["data", "ptb", "--data-dir", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["vocab_source"] == "valid" and stats["vocab_size"] == 4 + 2
    assert stats["splits"]["test"]["unk_tokens"] == 2  # x, y: not in valid
    # a map of train onto test does not move the vocabulary onto test
    assert main(["data", "ptb", "--data-dir", str(root), "--split-map", "train=test", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["vocab_source"] == "valid" and stats["splits"]["test"]["unk_tokens"] == 2


def test_no_hint_maps_anything_onto_test(tmp_path, registry, capsys):
    only_test = _ptb(tmp_path / "a", test="a b\n")
    assert main(["data", "ptb", "--data-dir", str(only_test), "--split", "train"]) == 2
    err = _flat(capsys.readouterr().err)
    assert "no 'train' split" in err and "=test" not in err

    two = _ptb(tmp_path / "b", valid="a b\n", test="a b\n")
    for root, expected in ((only_test, None), (two, "--split-map train=valid")):
        with pytest.raises(UsageError) as exc:  # a run needs train; its hint may map only onto valid
            registry.get("dataset", "ptb").load(DataRequest(seq_len=8, train_tokens=64, data_dir=root))
        assert "no 'train' split" in str(exc.value) and "=test" not in str(exc.value)
        assert expected is None or expected in str(exc.value)


# ------------------------------------------------------------------ offline
LAYOUT = ("--data-dir ROOT", "ROOT/wikitext-2/:", "wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")


def _one_clear_message(err: str) -> None:
    assert err.count("mkeval: error") == 1 and "Traceback" not in err and "Retrying" not in err
    flat = _flat(err)
    assert all(part in flat for part in LAYOUT), flat
    assert flat.count("Without network") == 1


def test_offline_mode_fails_at_once_with_one_message(tmp_path):
    start = time.monotonic()
    proc = _mkeval("data", "wikitext-2", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
                   MKEVAL_CACHE=str(tmp_path / "c"))
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    _one_clear_message(proc.stderr)
    assert "HF_HUB_OFFLINE=1 is set" in _flat(proc.stderr)
    assert elapsed < 20  # the retries this replaces took about 25 s after start-up


def test_offline_mode_does_not_probe_the_network(monkeypatch, capsys):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "connect", lambda *a: pytest.fail("offline mode must not connect"))

    def not_cached(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", not_cached)
    get_registry()  # plugins load once per process: not part of what is timed
    start = time.monotonic()
    assert main(["data", "wikitext-2"]) == 2
    assert time.monotonic() - start < 2
    _one_clear_message(capsys.readouterr().err)


@pytest.mark.parametrize("command", [["data", "wikitext-2"],
                                     ["run", "--models", "transformer", "--datasets", "wikitext-2"]])
def test_an_unreachable_hub_fails_before_any_download(monkeypatch, capsys, tmp_path, command):
    import datasets

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    tried = []

    def no_network(host, port, timeout):
        tried.append((host, port))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(hub, "connect", no_network)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be called"))
    out = tmp_path / "out"
    get_registry()
    start = time.monotonic()
    assert main(command + (["--output-dir", str(out)] if command[0] == "run" else [])) == 2
    assert time.monotonic() - start < 2
    err = capsys.readouterr().err
    _one_clear_message(err)
    assert "Network is unreachable" in _flat(err) and "HF_HUB_OFFLINE=1" in _flat(err)
    assert len(tried) == 1 and not out.exists()


def test_a_reachable_hub_goes_on_to_download(monkeypatch, capsys):
    import datasets

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "connect", lambda host, port, timeout: None)
    rows = {"train": ["a b c\n", "\n", "b d\n"], "validation": ["a a\n"], "test": ["a z\n", "b\n"]}
    loaded = []

    class Split(list):
        _fingerprint = "fake"

    def load_dataset(repo, config, split, streaming):
        loaded.append((repo, config, split))
        return Split({"text": t} for t in rows[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert main(["data", "wikitext-2", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert loaded == [("Salesforce/wikitext", "wikitext-2-v1", s) for s in ("train", "validation", "test")]
    assert stats["vocab_source"] == "train" and stats["vocab_size"] == 4 + 2  # a b c d, <unk>, <eos>
    assert [stats["splits"][s]["tokens"] for s in ("train", "valid", "test")] == [3 + 0 + 2 + 3, 2 + 1, 2 + 1 + 2]
    assert stats["splits"]["test"]["unk_tokens"] == 1


# ------------------------------------------------------------------ the connectivity check itself
def _no_proxies(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_the_check_connects_to_the_endpoint_or_its_proxy(monkeypatch):
    _no_proxies(monkeypatch)
    assert hub.first_hop("https://huggingface.co") == ("huggingface.co", 443)
    assert hub.first_hop("http://mirror.example:8080") == ("mirror.example", 8080)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.first_hop("https://huggingface.co") == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert hub.first_hop("https://huggingface.co") == ("huggingface.co", 443)


def test_the_check_says_whether_a_port_answers(monkeypatch):
    from huggingface_hub import constants

    _no_proxies(monkeypatch)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.unreachable(timeout=2) is None
    hub._answers.clear()  # ask again, not the remembered answer
    reason = hub.unreachable(timeout=2)  # closed now: refused
    assert reason is not None and reason.startswith(f"cannot connect to 127.0.0.1:{port}")


@pytest.mark.parametrize("value,expected", [("1", "HF_HUB_OFFLINE=1"), ("true", "HF_HUB_OFFLINE=true"),
                                            ("0", None), ("", None)])
def test_offline_mode_follows_the_hugging_face_variables(monkeypatch, value, expected):
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.offline_mode() == expected


# ------------------------------------------------------------------ help
def test_data_help_names_every_registered_dataset_and_each_default(registry):
    import argparse

    from mkeval.cli import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    data = commands.choices["data"]
    text = " ".join(data.format_help().split())
    shipped = [n for n, e in registry.entries["dataset"].items() if e.distribution == "mkeval"]
    assert len(shipped) >= 11 and all(name in text for name in shipped), text
    assert "mkeval list" in text  # where a plugin's datasets are listed
    for flag, default in (("--tokenizer", "word"), ("--seq-len", "128"), ("--split", "every split on disk"),
                          ("--data-dir", "none"), ("--split-map", "none"), ("--json", "off")):
        [action] = [a for a in data._actions if flag in a.option_strings]
        assert f"default: {default}" in " ".join((action.help % {"default": action.default}).split())


def test_a_task_from_an_unreachable_hub_is_skipped_at_once_with_the_reason(monkeypatch):
    """Downstream tasks read from the hub get the same check: skipped with the reason, no retries."""
    import datasets

    from mkeval.data.taskdata import TaskSkipped, load_task_data

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub, "connect", lambda host, port, timeout: (_ for _ in ()).throw(OSError(101, "unreachable")))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be called"))
    config = get_registry().get("task", "rte").spec
    assert config.hub is not None
    with pytest.raises(TaskSkipped, match="hub is not reachable.*--data-dir.*HF_HUB_OFFLINE=1"):
        load_task_data(config, None)


def test_the_reachability_answer_is_remembered_for_a_while(monkeypatch):
    """57 MMLU subjects from a silent network wait for one check, not 57."""
    calls = []

    def silent(host, port, timeout):
        calls.append(host)
        raise TimeoutError("no answer within 3 s")

    monkeypatch.setattr(hub, "connect", silent)
    clock = [1000.0]
    monkeypatch.setattr(hub.time, "monotonic", lambda: clock[0])
    first = hub.unreachable()
    assert first is not None and hub.unreachable() == first and len(calls) == 1
    clock[0] += hub.REMEMBER_SECONDS + 1
    assert hub.unreachable() == first and len(calls) == 2
