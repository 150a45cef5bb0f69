"""Downstream runs end to end on the real dev files: every reported metric is recomputed
independently (scikit-learn, scipy, the official SQuAD rules) from the predictions file."""

import collections
import json
import re
import string
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

import mkeval
from conftest import shared_data_or_skip

QUICK = dict(ft_epochs=1, ft_max_len=64, ft_batch_size=8, fewshot=(0, 1), model_size="tiny")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def squad_normalize(s):  # the official evaluate-v1.1.py rules, written out again
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(pred, gold):
    p, g = squad_normalize(pred).split(), squad_normalize(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def recompute(task, records):
    """The task's official metrics from its predictions, without mkeval.metrics."""
    refs = [r["reference"] for r in records]
    preds = [r["prediction"] for r in records]
    if task == "cola":
        return {"matthews_corrcoef": skm.matthews_corrcoef(refs, preds)}
    if task == "mrpc":
        return {"accuracy": skm.accuracy_score(refs, preds), "f1": skm.f1_score(refs, preds, pos_label="1")}
    if task == "stsb":
        x, y = np.array(refs, float), np.array(preds, float)
        return {"pearson": stats.pearsonr(x, y)[0], "spearman": stats.spearmanr(x, y)[0]}
    if task == "cb":
        return {"accuracy": skm.accuracy_score(refs, preds),
                "macro_f1": skm.f1_score(refs, preds, average="macro", labels=["entailment", "contradiction", "neutral"],
                                         zero_division=0)}
    if task == "squad":
        return {"em": np.mean([max(float(squad_normalize(p) == squad_normalize(g)) for g in gs)
                               for p, gs in zip(preds, refs)]),
                "f1": np.mean([max(squad_f1(p, g) for g in gs) for p, gs in zip(preds, refs)])}
    return {"accuracy": skm.accuracy_score(refs, preds)}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """transformer, fine-tuned from scratch on every task whose dev file is here, plus all of MMLU zero/one-shot."""
    root = shared_data_or_skip()
    out = tmp_path_factory.mktemp("downstream")
    tasks = "cola,mrpc,qnli,rte,stsb,cb,copa,sglue_rte,wsc,squad,sst2,mmlu"
    result = mkeval.run(models="transformer", tasks=tasks, data_dir=root, limit=6, dev_holdout=True, output_dir=out,
                        **QUICK)
    return out, result


def test_every_present_task_runs_and_its_metrics_match_the_predictions_file(real_run):
    out, result = real_run
    assert not result.failed_tasks
    folder = out / "downstream" / "transformer"
    checked = set()
    for task in ["cola", "mrpc", "qnli", "rte", "stsb", "cb", "copa", "sglue_rte", "wsc", "squad"]:
        res = json.loads((folder / f"{task}.json").read_text())
        assert res["status"] == "ok", (task, res.get("reason"))
        ft = res["finetune"]
        assert ft["status"] == "ok"
        records = read_jsonl(folder / ft["predictions_file"])
        assert len(records) == ft["examples"]["eval"] == res["data"]["examples"]["eval"] > 0
        assert {"id", "prediction", "reference"} <= set(records[0])
        for name, value in recompute(task, records).items():
            assert ft["metrics"][name] == pytest.approx(value, abs=1e-9), (task, name)
        checked.add(task)
    # copa is also scored zero-shot; its 1-shot needs a few-shot split, which is absent here. The word
    # vocabulary fitted on the fine-tuning half does not hold every word of the other half's options,
    # so the zero-shot scores would compare <unk> with <unk>: not scored, and said so
    copa = json.loads((folder / "copa.json").read_text())
    zero = copa["prompt"]["0-shot"]
    assert zero["status"] == "degenerate" and "unknown token" in zero["reason"] and "metrics" not in zero
    assert not (folder / "copa.0shot.predictions.jsonl").exists()
    assert copa["prompt"]["1-shot"]["status"] == "skipped"
    assert len(checked) == 10


def test_mmlu_all_subjects_zero_and_few_shot_with_micro_and_macro_averages(real_run, registry):
    out, _ = real_run
    summary = json.loads((out / "transformer_downstream.json").read_text())
    mmlu = summary["mmlu"]
    folder = out / "downstream" / "transformer"
    for mode, suffix in (("0-shot", "0shot"), ("1-shot", "1shot")):
        section = mmlu["modes"][mode]
        assert section["num_subjects_evaluated"] == 57
        correct = total = 0
        per_subject = {}
        by_cat = collections.defaultdict(lambda: [0, 0])
        for name in registry.names("task"):
            if not name.startswith("mmlu_"):
                continue
            records = read_jsonl(folder / f"{name}.{suffix}.predictions.jsonl")
            hits = sum(r["prediction"] == r["reference"] for r in records)
            assert all(len(r["loglikelihoods"]) == 4 for r in records)
            correct, total = correct + hits, total + len(records)
            per_subject[name[5:]] = hits / len(records)
            cat = registry.get("task", name).spec.category
            by_cat[cat][0] += hits
            by_cat[cat][1] += len(records)
        assert section["accuracy"] == pytest.approx(correct / total)  # micro: weighted by questions
        assert section["macro_accuracy"] == pytest.approx(np.mean(list(per_subject.values())))
        assert section["subject_scores"] == pytest.approx(per_subject)
        assert section["category_scores"] == pytest.approx({c: h / n for c, (h, n) in by_cat.items()})
        assert set(section["category_scores"]) == {"stem", "humanities", "social_sciences", "other"}
    # no auxiliary_train here: --dev-holdout fine-tuned on half of each test split, and a
    # fine-tuned score, when there is one, is the headline
    assert mmlu["mode"] == "fine-tuned" and mmlu["accuracy"] == mmlu["modes"]["fine-tuned"]["accuracy"]
    assert mmlu["modes"]["fine-tuned"]["num_subjects_evaluated"] == 57


def test_absent_tasks_are_reported_as_skipped_with_the_reason_not_as_a_score(real_run):
    out, _ = real_run
    summary = json.loads((out / "transformer_downstream.json").read_text())
    assert "sst2" in summary["skipped"] and "SST-2/dev.tsv" in summary["skipped"]["sst2"]
    assert "sst2" not in summary["glue"]
    assert summary["glue"]["average"] is None and not summary["glue"]["complete"]
    evaluated = summary["glue"]["tasks_evaluated"]
    scores = [np.mean([v for k, v in summary["glue"][t].items() if k not in ("score", "mode")]) for t in evaluated]
    assert summary["glue"]["average_over_evaluated"] == pytest.approx(np.mean(scores))
    assert summary["limit"] == 6 and summary["init"] == "scratch"


def test_resume_reuses_finished_tasks(real_run, tmp_path):
    out, _ = real_run
    before = json.loads((out / "downstream" / "transformer" / "cola.json").read_text())["created"]
    root = shared_data_or_skip()
    mkeval.run(models="transformer", tasks="cola", data_dir=root, limit=6, dev_holdout=True, output_dir=out,
               resume=True, **QUICK)
    assert json.loads((out / "downstream" / "transformer" / "cola.json").read_text())["created"] == before


def test_fine_tuning_starts_from_the_pretraining_cell(tmp_path):
    """With --datasets, each model is fine-tuned from its cell's checkpoint and reads text with its tokenizer."""
    root = shared_data_or_skip()
    result = mkeval.run(models="transformer", datasets="ptb", split_map="train=valid", tasks="rte",
                        data_dir=root, limit=8, output_dir=tmp_path, seq_len=64, train_tokens=64 * 16 * 4,
                        eval_tokens=2048, **QUICK)
    (cell,) = result.results
    summary = json.loads((tmp_path / "transformer_downstream.json").read_text())
    assert summary["init"] == "pretrained" and summary["pretrained_from"] == "transformer_ptb_seq64_bits32"
    task = json.loads((tmp_path / "downstream" / "transformer" / "rte.json").read_text())
    assert task["tokenizer"]["fingerprint"] == cell.config["dataset"]["info"]["tokenizer_fingerprint"]
    assert task["max_len"] == 64  # at most the pretraining length
    assert task["pretrained_from"]["checkpoint"].endswith(cell.checkpoint)


def test_synthetic_pretraining_data_cannot_feed_text_tasks(tmp_path):
    with pytest.raises(mkeval.UsageError, match="synthetic"):
        mkeval.run(models="transformer", datasets="markov", tasks="cola", output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_headline_command_on_this_cpu(tmp_path):
    """`mkeval run --models bk,mamba --tasks glue,mmlu --data-dir ... --limit N` completes (small N here)."""
    root = shared_data_or_skip()
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "bk,mamba", "--tasks", "glue,mmlu",
                           "--data-dir", str(root), "--limit", "2", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model in ("bk", "mamba"):
        summary = json.loads((tmp_path / f"{model}_downstream.json").read_text())
        # every task whose dev file is here runs; QNLI has no train split here, so it is scored
        # zero-shot only (its few-shot examples would come from the train split too)
        assert set(summary["glue"]["tasks_evaluated"]) == {"cola", "mrpc", "qnli", "rte", "stsb"}
        assert summary["glue"]["qnli"]["mode"] == "0-shot" and summary["glue"]["cola"]["mode"] == "fine-tuned"
        assert {"sst2", "qqp", "mnli", "mnli_mismatch", "wnli"} == set(summary["skipped"])
        assert summary["mmlu"]["num_subjects_evaluated"] == 57
    report = subprocess.run([sys.executable, "-m", "mkeval", "report", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0 and "mmlu" in report.stdout and "skipped" in report.stdout
    assert "paired comparison" in report.stdout and "mmlu (57 pooled)" in report.stdout


def test_prompt_scores_after_pretraining_on_lower_case_ptb_are_marked_not_numbers(tmp_path):
    """The finding: with a word vocabulary fitted on PTB, " A".." D" and " True"/" False" are all <unk>,
    every option tied, and the 'accuracy' was the share of A answers, identical for bk and mamba."""
    root = shared_data_or_skip()
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "bk,mamba", "--datasets", "ptb",
                           "--data-dir", str(root), "--split-map", "train=valid", "--tasks", "mmlu_anatomy,rte",
                           "--limit", "4", "--limit-windows", "4", "--train-tokens", "8192", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model in ("bk", "mamba"):
        folder = tmp_path / "downstream" / model
        mmlu = json.loads((folder / "mmlu_anatomy.json").read_text())
        assert mmlu["status"] == "degenerate"
        for mode in mmlu["prompt"].values():
            assert mode["status"] == "degenerate" and "unknown token" in mode["reason"] and "metrics" not in mode
        rte = json.loads((folder / "rte.json").read_text())
        assert rte["finetune"]["status"] == "ok"
        assert all(m["status"] == "degenerate" for m in rte["prompt"].values())
        cell = json.loads((tmp_path / f"{model}_ptb_seq128_bits32.json").read_text())
        assert "valid_is_train_text" in cell["marks"] and cell["vocabulary"]["fitted_on"] == "valid"
    report = subprocess.run([sys.executable, "-m", "mkeval", "report", str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    # no prompted row shows a number: each says degenerate, in both models' columns
    prompted = [line for line in lines if ("-shot" in line) and ("rte" in line or "anatomy" in line)]
    assert prompted and all(line.count("degenerate") == 2 for line in prompted)
    assert any("†" in line for line in lines)  # validation perplexity selected on training text
    assert "fitted on the valid split" in report.stdout
