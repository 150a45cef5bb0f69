"""Downstream task specs and their data, checked against independent references.

Names, groups and MMLU categories are compared with lm-evaluation-harness's own YAML files
(read here with yaml, not through tools/gen_mmlu_specs.py); row counts with the official
dataset sizes (../shared/data/MANIFEST.md); labels with the raw files read by csv/json here;
bad-row errors with hand-written fixtures whose bad lines we know.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import shared_data_or_skip

from mkeval.errors import UsageError
from mkeval.registry.manager import Registry, load_entry_points
from mkeval.runner.plan import included_tasks, resolve_tasks
from mkeval.data.taskdata import TaskSkipped, load_task_data
from mkeval.data.taskspec import canon, load_task_file

GLUE = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_mismatch", "qnli", "rte", "wnli"}
SUPERGLUE = {"boolq", "cb", "copa", "multirc", "record", "sglue_rte", "wic", "wsc"}
REPO_TASKS = (Path(__file__).resolve().parents[1] / "tasks").resolve()  # the tasks plugin's package data


@pytest.fixture(scope="module")
def reg():
    registry = Registry()
    load_entry_points(registry)
    return registry


def spec(reg, name):
    return reg.get("task", name).spec


# --------------------------------------------------------------------------- lm-evaluation-harness's files
class _LmEvalLoader(yaml.SafeLoader):
    """lm-eval's YAML uses ``!function`` tags; read them as None (we only want names and tags)."""


_LmEvalLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _lm_eval_yaml(path: Path) -> dict:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LmEvalLoader) or {}
    if "include" in data:  # lm-eval's own inheritance: the included file, overridden by this one
        data = {**_lm_eval_yaml(path.parent / data["include"]), **data}
    return data


@pytest.fixture(scope="module")
def lm_eval_tasks():
    lm_eval = pytest.importorskip("lm_eval")
    root = Path(lm_eval.__file__).parent / "tasks"
    out = {}
    for folder in ("glue", "super_glue", "mmlu/default"):
        for path in sorted((root / folder).rglob("*.yaml")):
            data = _lm_eval_yaml(path)
            tags = data.get("tag") or []
            data["tag"] = [tags] if isinstance(tags, str) else tags
            if isinstance(data.get("task"), str):  # group files (_mmlu_stem.yaml) list their tasks instead
                out[data["task"]] = data
    return out


def _tagged(lm_eval_tasks, tag):
    return {name for name, d in lm_eval_tasks.items() if tag in d["tag"]}


@pytest.fixture(scope="module")
def mmlu_categories(lm_eval_tasks):
    """subject task -> category, from the ``tag`` (``mmlu_stem_tasks`` -> ``stem``) of lm-eval's files."""
    out = {}
    for name, d in lm_eval_tasks.items():
        if name.startswith("mmlu_"):
            [tag] = [t for t in d["tag"] if t.startswith("mmlu_") and t.endswith("_tasks")]
            out[name] = tag.removeprefix("mmlu_").removesuffix("_tasks")
    return out


# --------------------------------------------------------------------------- 1. names and groups
def test_task_names_are_lm_evaluation_harness_names(reg, lm_eval_tasks, mmlu_categories):
    # lm-eval has no STS-B task; every other GLUE and SuperGLUE name is its own.
    assert _tagged(lm_eval_tasks, "glue") | {"stsb"} == GLUE
    assert _tagged(lm_eval_tasks, "super-glue-lm-eval-v1") == SUPERGLUE
    assert len(mmlu_categories) == 57
    assert set(reg.names("task")) == GLUE | SUPERGLUE | {"squad"} | set(mmlu_categories)


@pytest.mark.parametrize("group,size", [("glue", 10), ("superglue", 8), ("mmlu", 57), ("squad", 1)])
def test_groups_expand_to_their_tasks(reg, mmlu_categories, group, size):
    expected = {"glue": GLUE, "superglue": SUPERGLUE, "mmlu": set(mmlu_categories), "squad": {"squad"}}[group]
    names = [c.name for c in resolve_tasks(reg, [group])]
    assert len(names) == size and set(names) == expected


def test_mmlu_categories_and_category_groups_match_lm_eval(reg, mmlu_categories):
    for name, category in mmlu_categories.items():
        c = spec(reg, name)
        assert c.category == category, name
        assert set(c.groups) == {"mmlu", f"mmlu_{category}"}, name
    for category in set(mmlu_categories.values()):
        members = {n for n, cat in mmlu_categories.items() if cat == category}
        assert {c.name for c in resolve_tasks(reg, [f"mmlu_{category}"])} == members
    stem = {c.name for c in resolve_tasks(reg, ["mmlu_stem"])}
    assert {"mmlu_anatomy", "mmlu_college_physics", "mmlu_machine_learning"} <= stem
    assert "mmlu_philosophy" not in stem and len(stem) == 19  # lm-eval's README: 19 STEM subjects


def test_hub_datasets_and_splits_match_lm_eval(reg, lm_eval_tasks):
    checked = 0
    for name, d in lm_eval_tasks.items():
        if name not in reg.entries["task"] or spec(reg, name).hub is None:
            continue  # MultiRC and ReCoRD are local-only (their hub copies are laid out differently)
        hub = spec(reg, name).hub
        assert (hub.path, hub.name) == (d["dataset_path"], d["dataset_name"]), name
        assert hub.splits["eval"] == (d.get("test_split") or d["validation_split"]), name
        checked += 1
    assert checked == len(GLUE - {"stsb"}) + len(SUPERGLUE - {"multirc", "record"}) + 57


# --------------------------------------------------------------------------- 2. spec errors
TOY = """\
name: toy
kind: classification
groups: [toygroup]
metrics: [accuracy]
local:
  - format: tsv
    roots: [toy, Toy]
    files: {train: train.tsv, eval: dev.tsv}
inputs: ["{sentence}"]
label: label
labels: [0, 1]
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_toy_spec_is_valid(tmp_path):
    c = load_task_file(_write(tmp_path / "toy.yaml", TOY))
    assert (c.name, c.kind, c.labels, c.local[0].files) == ("toy", "classification", (0, 1),
                                                            {"train": ("train.tsv",), "eval": ("dev.tsv",)})


@pytest.mark.parametrize("old,new,line,names", [
    ("labels: [0, 1]\n", "labels: [0, 1]\ncolour: red\n", 12, ["'colour'", "unknown field"]),
    ("    roots: [toy, Toy]\n", "    roots: [toy, Toy]\n    delimiter: ';'\n", 8, ["'delimiter'", "LocalLayout"]),
    ("kind: classification", "kind: ranking", 2, ["'kind'", "'ranking'"]),
    ("metrics: [accuracy]", "metrics: [acuracy]", 4, ["'metrics'", "'acuracy'"]),
    ("kind: classification", "kind: classification: binary", 2, ["malformed YAML"]),
    ("labels: [0, 1]", "labels: [0, 1", 11, ["malformed YAML", "flow sequence"]),  # unclosed: name where it opened
    ("kind: classification\n", "", 1, ["missing required field", "kind"]),
    ("    files: {train: train.tsv, eval: dev.tsv}\n", "", 6, ["missing required field", "files"]),
    ("labels: [0, 1]\n", "labels: [0, 1]\nhub: {path: x, splits: {eval: test}, revision: main}\n", 12,
     ["'revision'", "HubSource"]),
])
def test_spec_error_names_file_line_and_key(tmp_path, old, new, line, names):
    assert old in TOY
    path = _write(tmp_path / "bad.yaml", TOY.replace(old, new))
    with pytest.raises(UsageError) as info:
        load_task_file(path)
    message = str(info.value)
    assert f"{path}:" in message
    assert f"{path}:{line}:" in message or f"line {line}" in message, message
    for name in names:
        assert name in message


def test_yaml_python_tag_is_rejected_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "evil.yaml", TOY + f'description: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UsageError) as info:
        load_task_file(path)
    assert f"{path}:12" in str(info.value) and "python/object/apply" in str(info.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- 3. real files
def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8-sig")
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def _tsv(path: Path, header: bool = True) -> list[list[str]]:
    """A TSV split on tabs by hand (GLUE's files have no quoting)."""
    return [line.split("\t") for line in _lines(path)[1 if header else 0:]]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


@pytest.fixture(scope="module")
def real(reg):
    """``load(task, **options)`` on ../shared/data, each read once per module."""
    root = shared_data_or_skip()
    cache = {}

    def load(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = load_task_data(spec(reg, name), root, **options)
        return cache[key]

    load.root = root
    return load


@pytest.mark.parametrize("name,counts,missing", [
    # GLUE tasks with an lm-eval prompt read their few-shot examples from the train file
    ("cola", {"train": 8551, "eval": 1043, "fewshot": 8551}, set()),  # eval: in_domain_dev 527 + out_of_domain_dev 516
    ("mrpc", {"train": 3668, "eval": 408, "fewshot": 3668}, set()),
    ("stsb", {"train": 5749, "eval": 1500}, set()),
    ("qnli", {"eval": 5463}, {"train", "fewshot"}),
    ("rte", {"train": 2490, "eval": 277, "fewshot": 2490}, set()),
    ("cb", {"train": 250, "eval": 56}, set()),
    ("copa", {"eval": 100}, {"train", "fewshot"}),
    ("sglue_rte", {"train": 2490, "eval": 277}, set()),
    ("wsc", {"train": 554, "eval": 104}, set()),
    ("squad", {"eval": 10570}, {"train"}),
])
def test_real_row_counts_are_the_official_counts(real, name, counts, missing):
    data = real(name)
    assert {r: len(v) for r, v in data.rows.items()} == counts
    assert data.total_rows == counts
    assert set(data.missing) == missing
    assert set(data.skipped_rows.values()) <= {0}


def _labels(reg, name, data, role="eval"):
    labels = spec(reg, name).labels
    return [labels[r["_label"]] for r in data.rows[role]]


def test_cola_labels_are_the_two_dev_files_in_order(reg, real):
    folder = real.root / "glue/CoLA/cola_public/raw"
    rows = _tsv(folder / "in_domain_dev.tsv", header=False) + _tsv(folder / "out_of_domain_dev.tsv", header=False)
    assert len(rows) == 1043
    assert _labels(reg, "cola", real("cola")) == [int(r[1]) for r in rows]
    assert [r["sentence"] for r in real("cola").rows["eval"]] == [r[3] for r in rows]
    assert len({r["_id"] for r in real("cola").rows["eval"]}) == 1043


def test_mrpc_labels_match_the_quality_column(reg, real):
    rows = _tsv(real.root / "glue/MRPC/dev.tsv")
    labels = _labels(reg, "mrpc", real("mrpc"))
    assert labels == [int(r[0]) for r in rows]
    assert labels.count(1) == 279 and len(labels) == 408  # MANIFEST: 279 positive / 129 negative
    assert Counter(_labels(reg, "mrpc", real("mrpc"), "train")) == {1: 2474, 0: 1194}


def test_stsb_scores_are_the_files_score_column(real):
    rows = _tsv(real.root / "glue/STS-B/dev.tsv")
    got = real("stsb").rows["eval"]
    assert [r["_label"] for r in got] == [float(r[9]) for r in rows]
    assert all(isinstance(r["_label"], float) for r in got)
    assert [(r["sentence1"], r["sentence2"]) for r in got] == [(r[7], r[8]) for r in rows]


def test_qnli_and_rte_labels_match_the_files(reg, real):
    for name, path in [("qnli", "glue/QNLI/dev.tsv"), ("rte", "glue/RTE/dev.tsv")]:
        assert _labels(reg, name, real(name)) == [r[-1] for r in _tsv(real.root / path)], name
    assert Counter(_labels(reg, "rte", real("rte"))) == {"entailment": 146, "not_entailment": 131}


@pytest.mark.parametrize("name,path", [("cb", "superglue/CB/val.jsonl"), ("sglue_rte", "superglue/RTE/val.jsonl"),
                                       ("wsc", "superglue/WSC/val.jsonl"), ("copa", "superglue/COPA/val.jsonl")])
def test_superglue_labels_match_the_jsonl(reg, real, name, path):
    raw = _jsonl(real.root / path)
    got = real(name).rows["eval"]
    assert [canon(v) for v in _labels(reg, name, real(name))] == [canon(o["label"]) for o in raw]
    assert [r["_id"] for r in got] == [str(o["idx"]) for o in raw]


def test_cb_label_distribution(reg, real):
    expected = Counter(o["label"] for o in _jsonl(real.root / "superglue/CB/val.jsonl"))
    assert Counter(_labels(reg, "cb", real("cb"))) == expected
    assert sum(expected.values()) == 56 and set(expected) == {"entailment", "contradiction", "neutral"}


def test_squad_questions_match_the_json(real):
    raw = json.loads((real.root / "squad-v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    qas = [(qa["id"], [a["text"] for a in qa["answers"]]) for article in raw["data"]
           for para in article["paragraphs"] for qa in para["qas"]]
    assert len(raw["data"]) == 48 and len(qas) == 10570
    assert [(r["_id"], r["answers"]) for r in real("squad").rows["eval"]] == qas


@pytest.fixture(scope="module")
def mmlu(reg, real, mmlu_categories):
    return {name: real(name) for name in mmlu_categories}


def test_mmlu_counts(mmlu):
    assert sum(len(d.rows["eval"]) for d in mmlu.values()) == 14042
    assert len(mmlu["mmlu_anatomy"].rows["eval"]) == 135
    assert {name: len(d.rows["fewshot"]) for name, d in mmlu.items()} == {name: 5 for name in mmlu}
    assert all(set(d.missing) == {"train"} for d in mmlu.values())  # auxiliary_train is not in shared/data
    # ids default to file:line; 1,285 MMLU records span several lines and must still be unique
    assert all(len({r["_id"] for r in d.rows["eval"]}) == len(d.rows["eval"]) for d in mmlu.values())


def test_mmlu_answers_match_the_csv(reg, real, mmlu):
    with open(real.root / "mmlu/data/test/anatomy_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    got = mmlu["mmlu_anatomy"].rows["eval"]
    assert [spec(reg, "mmlu_anatomy").labels[r["_label"]] for r in got] == [r[5] for r in rows]
    assert [(r["question"], r["A"], r["D"]) for r in got] == [(r[0], r[1], r[4]) for r in rows]


# --------------------------------------------------------------------------- 4. absent files
def test_absent_files_skip_with_the_paths_looked_for(reg, real):
    with pytest.raises(TaskSkipped) as info:
        load_task_data(spec(reg, "sst2"), real.root)
    message = str(info.value)
    assert str(real.root) in message
    for path in ("glue/SST-2/dev.tsv", "glue_data/SST-2/dev.tsv"):  # download_glue_data.py's layout
        assert path in message


def test_absent_fixture_files_list_every_root(tmp_path):
    config = load_task_file(_write(tmp_path / "toy.yaml", TOY))
    (tmp_path / "data").mkdir()
    with pytest.raises(TaskSkipped) as info:
        load_task_data(config, tmp_path / "data")
    assert "toy/dev.tsv" in str(info.value) and "Toy/dev.tsv" in str(info.value)


def test_no_data_dir_and_no_hub_skips(tmp_path):
    config = load_task_file(_write(tmp_path / "toy.yaml", TOY))
    assert config.hub is None
    with pytest.raises(TaskSkipped):
        load_task_data(config, None)


# --------------------------------------------------------------------------- 5. bad rows
TOY_JSONL = """\
name: toyjson
kind: classification
metrics: [accuracy]
local:
  - format: jsonl
    files: {eval: val.jsonl}
id: idx
inputs: ["{premise}", "{hypothesis}"]
label: label
labels: [entailment, contradiction]
"""

TOY_CSV = """\
name: toymc
kind: multiple_choice
metrics: [accuracy]
local:
  - format: csv
    header: false
    columns: [question, A, B, C, D, answer]
    files: {eval: test.csv}
inputs: ["{question}"]
choices: ["{A}", "{B}", "{C}", "{D}"]
label: answer
labels: [A, B, C, D]
"""

GOOD_JSON = ['{"idx": 0, "premise": "p", "hypothesis": "h", "label": "entailment"}',
             '{"idx": 1, "premise": "p", "hypothesis": "h", "label": "contradiction"}']


def _toy(tmp_path, spec_text, files):
    config = load_task_file(_write(tmp_path / "spec" / "toy.yaml", spec_text))
    root = tmp_path / "data"
    for name, text in files.items():
        _write(root / name, text)
    return config, root


# (spec, files, the bad file, its bad line, words in the message)
BAD_ROWS = {
    "tsv_columns": (TOY, {"toy/dev.tsv": "sentence\tlabel\nok.\t1\ntoo\tmany\tcolumns\n"}, "toy/dev.tsv", 3,
                    ["3 columns, expected 2"]),
    "tsv_label": (TOY, {"toy/dev.tsv": "sentence\tlabel\nok.\t1\nok.\t0\nhm.\tyes\n"}, "toy/dev.tsv", 4,
                  ["unknown label 'yes'"]),
    "tsv_field": (TOY.replace('"{sentence}"', '"{text}"'), {"toy/dev.tsv": "sentence\tlabel\nok.\t1\n"},
                  "toy/dev.tsv", 2, ["missing field 'text'"]),
    "json_malformed": (TOY_JSONL, {"val.jsonl": "\n".join([GOOD_JSON[0], '{"idx": 1, "premise": ', GOOD_JSON[1]])},
                       "val.jsonl", 2, ["malformed JSON"]),
    "json_field": (TOY_JSONL,
                   {"val.jsonl": "\n".join([*GOOD_JSON, '{"idx": 2, "premise": "p", "label": "entailment"}'])},
                   "val.jsonl", 3, ["missing field 'hypothesis'"]),
    "json_label": (TOY_JSONL, {"val.jsonl": "\n".join(['{"idx": 0, "premise": "p", "hypothesis": "h", "label": 2}',
                                                       *GOOD_JSON])},
                   "val.jsonl", 1, ["unknown label '2'"]),
    "csv_label": (TOY_CSV, {"test.csv": 'What?,a,b,c,d,A\n"Two\nlines?",a,b,c,d,B\nWhy?,a,b,c,d,E\n'}, "test.csv", 4,
                  ["unknown label 'E'"]),
    # a quoted field spanning lines 2-3: the error names the line where the record starts
    "csv_columns": (TOY_CSV, {"test.csv": 'What?,a,b,c,d,A\n"Two\nlines?",a,b,c,d\nWhy?,a,b,c,d,C\n'}, "test.csv", 2,
                    ["5 columns, expected 6"]),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_row_names_file_and_line(tmp_path, case):
    spec_text, files, bad_file, line, words = BAD_ROWS[case]
    config, root = _toy(tmp_path, spec_text, files)
    with pytest.raises(UsageError) as info:
        load_task_data(config, root)
    message = str(info.value)
    assert f"{root / bad_file}:{line}:" in message, message
    assert "--skip-bad-rows" in message
    for word in words:
        assert word in message


def test_skip_bad_rows_counts_them_exactly(tmp_path):
    config, root = _toy(tmp_path, TOY, {
        "toy/train.tsv": "sentence\tlabel\na.\t0\nb.\t2\nc.\t1\n",
        "toy/dev.tsv": "sentence\tlabel\nok.\t1\ntoo\tmany\tcolumns\nhm.\tyes\n\nfine.\t0\nshort\n",
    })
    data = load_task_data(config, root, skip_bad_rows=True)
    assert [(r["sentence"], r["_label"]) for r in data.rows["eval"]] == [("ok.", 1), ("fine.", 0)]
    assert [(r["sentence"], r["_label"]) for r in data.rows["train"]] == [("a.", 0), ("c.", 1)]
    assert data.skipped_rows == {"eval": 3, "train": 1}
    assert [r["_where"] for r in data.rows["eval"]] == [f"{root}/toy/dev.tsv:2", f"{root}/toy/dev.tsv:6"]


def test_skip_bad_rows_in_jsonl(tmp_path):
    lines = [GOOD_JSON[0], "not json", '{"idx": 5, "premise": "p", "label": "entailment"}', "[1, 2]", GOOD_JSON[1]]
    config, root = _toy(tmp_path, TOY_JSONL, {"val.jsonl": "\n".join(lines) + "\n"})
    data = load_task_data(config, root, skip_bad_rows=True)
    assert [r["_id"] for r in data.rows["eval"]] == ["0", "1"]
    assert data.skipped_rows == {"eval": 3}


def _mkeval(*args):
    return subprocess.run([sys.executable, "-m", "mkeval", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def test_cli_bad_row_exits_2_naming_the_line_and_writes_nothing(tmp_path):
    config, root = _toy(tmp_path, TOY, {"toy/dev.tsv": "sentence\tlabel\nok.\t1\nhm.\t7\n",
                                        "toy/train.tsv": "sentence\tlabel\na.\t0\n"})
    out = tmp_path / "out"
    proc = _mkeval("run", "--models", "transformer", "--tasks", "toy", "--include-path", str(tmp_path / "spec"),
                   "--data-dir", str(root), "--output-dir", str(out))
    assert proc.returncode == 2, proc.stderr
    assert f"{root / 'toy/dev.tsv'}:3" in proc.stderr and "unknown label '7'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- 6. --limit and --dev-holdout
def test_limit_caps_rows_and_keeps_the_counts_before_it(tmp_path):
    dev = "sentence\tlabel\n" + "".join(f"s{i}.\t{i % 2}\n" for i in range(7))
    config, root = _toy(tmp_path, TOY, {"toy/dev.tsv": dev, "toy/train.tsv": dev + "extra.\t1\n"})
    data = load_task_data(config, root, limit=3)
    assert {r: [x["sentence"] for x in v] for r, v in data.rows.items()} == {"eval": ["s0.", "s1.", "s2."],
                                                                            "train": ["s0.", "s1.", "s2."]}
    assert data.total_rows == {"eval": 7, "train": 8}


def test_limit_on_real_files(real):
    full, limited = real("cola"), real("cola", limit=10)
    # few-shot examples are not capped
    assert {r: len(v) for r, v in limited.rows.items()} == {"train": 10, "eval": 10, "fewshot": 8551}
    assert limited.total_rows == {"train": 8551, "eval": 1043, "fewshot": 8551}
    assert limited.rows["eval"] == full.rows["eval"][:10]


def test_dev_holdout_splits_qnli_dev_into_disjoint_seeded_halves(real):
    all_ids = [r["_id"] for r in real("qnli").rows["eval"]]
    assert len(set(all_ids)) == 5463
    a, again, other = (real("qnli", dev_holdout=True, seed=s) for s in (1234, 1234, 7))
    train, held = {r["_id"] for r in a.rows["train"]}, {r["_id"] for r in a.rows["eval"]}
    assert (len(train), len(held)) == (5463 // 2, 5463 - 5463 // 2)
    assert not train & held and train | held == set(all_ids)
    assert a.train_from_eval and "train" not in a.missing
    assert a.total_rows == {"train": 2731, "eval": 2732}
    assert [r["_id"] for r in again.rows["train"]] == [r["_id"] for r in a.rows["train"]]
    assert {r["_id"] for r in other.rows["train"]} != train


def test_dev_holdout_leaves_a_task_with_a_train_split_alone(real):
    data = real("cola", dev_holdout=True)
    assert not data.train_from_eval
    assert {r: len(v) for r, v in data.rows.items()} == {"train": 8551, "eval": 1043, "fewshot": 8551}


# --------------------------------------------------------------------------- 7. --include-path
def test_include_path_adds_a_task(reg, tmp_path):
    folder = tmp_path / "extra"
    _write(folder / "nested" / "toy.yaml", TOY)
    extra = included_tasks(folder)
    assert list(extra) == ["toy"] and extra["toy"].source_file == str(folder / "nested" / "toy.yaml")
    assert [c.name for c in resolve_tasks(reg, ["toy"], extra)] == ["toy"]
    assert [c.name for c in resolve_tasks(reg, ["toygroup", "cola"], extra)] == ["toy", "cola"]
    with pytest.raises(UsageError, match="unknown task or group 'toy'"):
        resolve_tasks(reg, ["toy"])


def test_include_path_reusing_a_registered_name_names_both_files(reg, tmp_path):
    path = _write(tmp_path / "extra" / "mycola.yaml", TOY.replace("name: toy", "name: cola"))
    with pytest.raises(UsageError) as info:
        resolve_tasks(reg, ["cola"], included_tasks(tmp_path / "extra"))
    message = str(info.value)
    assert str(path) in message and str(REPO_TASKS / "glue" / "cola.yaml") in message


def test_include_paths_defining_a_name_twice_name_both_files(tmp_path):
    one = _write(tmp_path / "a" / "toy.yaml", TOY)
    two = _write(tmp_path / "b" / "toy.yaml", TOY)
    with pytest.raises(UsageError) as info:
        included_tasks(f"{tmp_path / 'a'},{tmp_path / 'b'}")
    assert str(one) in str(info.value) and str(two) in str(info.value)
