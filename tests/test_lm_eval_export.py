"""`mkeval export RUN --format lm-eval`: downstream results in lm-evaluation-harness's output schema."""

import json
import math

import numpy as np
import pytest

import mkeval
from mkeval.cli import main

SPEC = """\
name: toyyes
kind: multiple_choice
metrics: [accuracy]
local:
  - format: jsonl
    files: {train: train.jsonl, eval: val.jsonl}
inputs: ["{q}"]
choices: ["{a}", "{b}"]
label: label
labels: [0, 1]
prompt:
  text: "{q}"
  choices: [" {a}", " {b}"]
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmx")
    (root / "spec").mkdir()
    (root / "spec" / "toyyes.yaml").write_text(SPEC)
    (root / "data").mkdir()
    rows = [{"q": f"is {i} even", "a": "yes", "b": "no", "label": i % 2} for i in range(24)]
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    (root / "data" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    out = root / "out"
    protocol = mkeval.Protocol(ft_epochs=1, ft_batch_size=4, ft_max_len=32, fewshot=(0,), batch_size=4,
                               seq_lens=(16,), train_tokens=4 * 16 * 2)
    mkeval.run(models="transformer", tasks="toyyes", include_path=str(root / "spec"), data_dir=root / "data",
               protocol=protocol, output_dir=out, device="cpu")
    return out


def test_results_follow_lm_evals_schema_and_numbers(run_dir, tmp_path):
    from lm_eval.utils import make_table

    target = tmp_path / "lm"
    assert main(["export", str(run_dir), "--format", "lm-eval", "--output", str(target)]) == 0
    task = json.loads((run_dir / "downstream" / "transformer" / "toyyes.json").read_text())
    for mode, folder in (("fine-tuned", "fine_tuned"), ("0-shot", "0_shot")):
        doc = json.loads((target / "transformer" / folder / "results.json").read_text())
        assert {"results", "versions", "n-shot", "configs", "n-samples", "higher_is_better", "config"} <= set(doc)
        m = task["finetune"] if mode == "fine-tuned" else task["prompt"][mode]
        entry = doc["results"]["toyyes"]
        assert entry["acc,none"] == m["metrics"]["accuracy"]
        samples = [json.loads(line) for line in (target / "transformer" / folder / "samples_toyyes.jsonl")
                   .read_text().splitlines()]
        hits = [s["acc"] for s in samples]
        assert len(samples) == 8 == doc["n-samples"]["toyyes"]["effective"] and np.mean(hits) == entry["acc,none"]
        assert entry["acc_stderr,none"] == pytest.approx(np.std(hits, ddof=1) / math.sqrt(len(hits)))
        assert doc["n-shot"]["toyyes"] == 0  # fine-tuned: no shots; 0-shot: none either
        assert "toyyes" in make_table(doc)  # lm-eval's own table reads it
    if task["prompt"]["0-shot"]["status"] == "ok":
        assert len(samples[0]["filtered_resps"]) == 2  # one log-likelihood per option


def test_a_run_without_downstream_results_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--format", "lm-eval", "--output", str(tmp_path / "x")]) == 2


def test_squad_em_and_f1_get_lm_evals_mean_stderr():
    """SQuAD's (and ReCoRD's) EM and F1 are means over questions: their standard error is the sample
    std of the per-question scores over sqrt(n), computed here by hand; MultiRC's EM is not."""
    from mkeval.interop.lm_eval_export import _per_example, _stderr

    records = [{"prediction": "the cat", "reference": ["cat"]},       # EM 1, F1 1
               {"prediction": "a big dog", "reference": ["big dog"]},  # EM 1 (articles dropped), F1 1
               {"prediction": "red fox", "reference": ["fox"]},        # EM 0, F1 2/3
               {"prediction": "moon", "reference": ["sun"]}]           # EM 0, F1 0
    for metric, per_question in (("em", [1, 1, 0, 0]), ("f1", [1, 1, 2 / 3, 0])):
        expected = np.std(per_question, ddof=1) / math.sqrt(4)
        assert math.isclose(_stderr(metric, records, ["squad"], None), expected)
    assert _per_example("em", {"prediction": "1", "reference": "1"}, ["multirc"]) is None  # per question: bootstrap
