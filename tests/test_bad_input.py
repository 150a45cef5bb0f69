"""Bad input that used to slip through: each case exits 2 before any work, naming the file and line
(or the field), and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mkeval
from mkeval.errors import UsageError
from mkeval.data.taskdata import load_task_data
from mkeval.data.taskspec import load_task_file

STSB = """\
name: toysts
kind: regression
metrics: [pearson]
local:
  - format: tsv
    files: {train: train.tsv, eval: dev.tsv}
inputs: ["{s1}", "{s2}"]
label: score
"""
SPAN = """\
name: toyspan
kind: span
metrics: [squad]
local:
  - format: squad
    files: {eval: dev.json}
id: id
context: context
question: question
answers: answers
finetune: true
"""
CLS = """\
name: toycls
kind: classification
metrics: [accuracy]
local:
  - format: tsv
    files: {train: train.tsv, eval: dev.tsv}
inputs: ["{sentence}"]
label: label
labels: [0, 1]
"""
JSONL = """\
name: toyjsonl
kind: classification
metrics: [accuracy]
local:
  - format: jsonl
    files: {train: train.jsonl, eval: val.jsonl}
inputs: ["{premise}"]
label: label
labels: [a, b]
"""


def _toy(tmp_path: Path, spec: str, files: dict[str, str | bytes]):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir(parents=True, exist_ok=True)
    path = spec_dir / "toy.yaml"
    path.write_text(spec)
    root = tmp_path / "data"
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return load_task_file(path), root


def _mkeval(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkeval", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


def _run_task_cli(tmp_path: Path, name: str, root: Path) -> subprocess.CompletedProcess:
    return _mkeval("run", "--models", "transformer", "--tasks", name, "--include-path", str(tmp_path / "spec"),
                   "--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--limit", "4")


def test_an_eval_split_with_a_header_and_no_rows_exits_2_before_fine_tuning(tmp_path):
    _, root = _toy(tmp_path, CLS, {"train.tsv": "sentence\tlabel\na.\t0\nb.\t1\n", "dev.tsv": "sentence\tlabel\n"})
    proc = _run_task_cli(tmp_path, "toycls", root)
    assert proc.returncode == 2, proc.stderr
    assert f"{root / 'dev.tsv'}:1" in proc.stderr and "header but no rows" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_an_empty_jsonl_split_exits_2(tmp_path):
    _, root = _toy(tmp_path, JSONL, {"train.jsonl": '{"premise": "p", "label": "a"}\n', "val.jsonl": ""})
    proc = _run_task_cli(tmp_path, "toyjsonl", root)
    assert proc.returncode == 2, proc.stderr
    assert f"{root / 'val.jsonl'}:1" in proc.stderr and "no rows" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("score", ["nan", "inf", "-Infinity"])
def test_a_non_finite_regression_label_is_a_bad_row(tmp_path, score):
    dev = f"s1\ts2\tscore\na\tb\t1.5\nc\td\t{score}\ne\tf\t3.0\n"
    config, root = _toy(tmp_path, STSB, {"train.tsv": "s1\ts2\tscore\na\tb\t2.0\n", "dev.tsv": dev})
    with pytest.raises(UsageError) as info:
        load_task_data(config, root)
    assert f"{root / 'dev.tsv'}:3" in str(info.value) and "not a finite number" in str(info.value)
    data = load_task_data(config, root, skip_bad_rows=True)  # counted and left out
    assert [r["_label"] for r in data.rows["eval"]] == [1.5, 3.0]
    assert data.skipped_rows["eval"] == 1


def _squad(answer_start: int, text: str = "Paris") -> str:
    context = "The capital of France is Paris."
    return json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 25}]},
        {"id": "q2", "question": "Capital again?", "answers": [{"text": text, "answer_start": answer_start}]},
    ]}]}]})


@pytest.mark.parametrize("start,text,words", [(400, "Paris", "outside its context"),
                                              (-1, "Paris", "outside its context"),
                                              (4, "Paris", "reads 'capit'")])
def test_a_squad_answer_start_outside_or_off_its_answer_is_a_bad_row(tmp_path, start, text, words):
    config, root = _toy(tmp_path, SPAN, {"dev.json": _squad(start, text)})
    with pytest.raises(UsageError) as info:
        load_task_data(config, root)
    assert "question 1" in str(info.value) and words in str(info.value)
    data = load_task_data(config, root, skip_bad_rows=True)
    assert [r["_id"] for r in data.rows["eval"]] == ["q1"]


def test_non_utf8_bytes_in_a_tsv_name_their_real_line(tmp_path):
    dev = b"sentence\tlabel\nfine.\t1\nalso fine.\t0\nbad \xff byte.\t1\n"
    config, root = _toy(tmp_path, CLS, {"train.tsv": "sentence\tlabel\na.\t0\n", "dev.tsv": dev})
    with pytest.raises(UsageError) as info:
        load_task_data(config, root)
    assert f"{root / 'dev.tsv'}:4" in str(info.value) and "not valid UTF-8" in str(info.value)


def test_an_unknown_model_option_in_a_config_names_its_line_before_any_work(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("models: bk\ntrain_tokens: 8192\nmodel_options:\n  bk:\n    n_layers: 1\n    d_modle: 32\n")
    out = tmp_path / "out"
    proc = _mkeval("run", "--config", str(cfg), "--output-dir", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"{cfg}:6" in proc.stderr and "d_modle" in proc.stderr and "d_model" in proc.stderr
    assert not out.exists()


def test_a_bad_model_option_value_is_caught_at_plan_time(tmp_path):
    with pytest.raises(UsageError, match="top_k"):
        mkeval.run(models="bk", model_options={"bk": {"top_k": 9}}, output_dir=tmp_path / "out", dry_run=True)


@pytest.mark.parametrize("split_map,words", [("train=bogus", "unknown split 'bogus'"),
                                             ("bogus=valid", "unknown role 'bogus'")])
def test_unknown_split_names_are_rejected_everywhere(tmp_path, split_map, words):
    with pytest.raises(UsageError, match=words):  # a synthetic dataset used to ignore the map
        mkeval.run(models="transformer", datasets="markov", split_map=split_map, output_dir=tmp_path, dry_run=True)
    proc = _mkeval("data", "markov", "--split-map", split_map)
    assert proc.returncode == 2 and words in proc.stderr


def test_a_split_map_applies_to_synthetic_data_too(tmp_path):
    from mkeval.data.stats import split_statistics

    plain = split_statistics("markov", split="valid")["splits"]["valid"]["tokens"]
    mapped = split_statistics("markov", split="train", split_map="train=valid")["splits"]["train"]
    assert mapped["tokens"] == plain
