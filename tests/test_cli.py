"""The CLI: exit codes, messages, list, run, report."""

import json
import subprocess
import sys

import pytest

from mkeval.cli import main


def _mkeval(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mkeval", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "COLUMNS": "200"})


def test_list_json_shows_first_party_plugins_with_their_distribution():
    proc = _mkeval("list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    models = {m["name"]: m for m in data["model"]}
    assert models["transformer"]["distribution"] == "mkeval"
    assert {d["name"] for d in data["dataset"]} >= {"markov", "mqar", "selective-copy", "induction"}
    assert data["load_errors"] == []


@pytest.mark.parametrize("args,message", [
    (["run", "--models", "transfomer"], "did you mean 'transformer'"),
    (["run", "--seq-len", "-5"], "--seq-len"),
    (["run", "--precisions", "fp7"], "unknown precision 'fp7'"),
    (["run", "--bits", "7"], "accepted values"),
    (["run", "--datasets", "markov,"], "--datasets: empty name"),
    (["run", "--device", "meta"], "--device"),
    (["run", "--datasets", "selective-copy", "--seq-len", "16"], "too short"),
    (["run", "--tokenizer", "bpe:abc"], "vocabulary size"),
    (["run", "--split-map", "train"], "ROLE=SPLIT"),
    (["run", "--split-map", "train=valid,train=test"], "mapped twice"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "res"
    proc = _mkeval(*args, "--output-dir", str(out))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_check_with_a_degenerate_shape_exits_2():
    proc = _mkeval("check", "transformer", "--seq-len", "1")
    assert proc.returncode == 2 and "seq_len >= 2" in proc.stderr


def test_check_names_a_misspelt_model_as_its_positional(capsys):
    assert main(["check", "transfomer"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown model 'transfomer' (in mkeval check MODEL); did you mean 'transformer'?" in err


def test_malformed_config_exits_2_naming_the_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: 0.01\nbatch_size: [1,\n")
    out = tmp_path / "res"
    proc = _mkeval("run", "--config", str(cfg), "--output-dir", str(out))
    assert proc.returncode == 2 and "bad.yaml:" in proc.stderr and "malformed YAML" in proc.stderr
    assert not out.exists()


def test_output_dir_that_cannot_be_written_exits_2(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    proc = _mkeval("run", "--output-dir", str(blocker))
    assert proc.returncode == 2 and "--output-dir" in proc.stderr


def test_run_then_report(tmp_path, capsys):
    out = tmp_path / "res"
    code = main(["run", "--models", "transformer", "--datasets", "induction", "--seq-len", "16", "--train-tokens",
                 "1024", "--batch-size", "8", "--eval-interval", "4", "--limit-windows", "4", "--output-dir", str(out)])
    assert code == 0
    [result] = [p for p in out.glob("*.json") if p.name.startswith("transformer_")]
    assert result.name == "transformer_induction_seq16_bits32.json"
    data = json.loads(result.read_text())
    assert data["config"]["limit_windows"] == 4 and data["test_tokens"] == 4  # one scored token per example
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "transformer" in printed and "induction" in printed
    md = (out / "report.md").read_text()
    assert f"{data['test_perplexity']:.3f}" in md
    assert "quick run: validation and test perplexities from at most 4 windows per split (--limit-windows)" in md
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and csv_lines[0].startswith("model_name,dataset")


def test_limit_is_for_tasks_and_limit_windows_for_language_modelling(tmp_path, capsys):
    """lm-eval's --limit counts task examples; a run without --tasks is told to use --limit-windows."""
    out = tmp_path / "res"
    assert main(["run", "--models", "transformer", "--datasets", "induction", "--limit", "4",
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--limit 4" in err and "no --tasks" in err and "--limit-windows 4" in err
    assert not out.exists()
    config = tmp_path / "run.yaml"
    config.write_text("models: transformer\ndatasets: induction\nlimit: 4\n")
    assert main(["run", "--config", str(config), "--output-dir", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{config}:3: limit: 4" in err and "use limit_windows: 4" in err and not out.exists()


def test_report_on_an_empty_dir_exits_2(tmp_path):
    assert main(["report", str(tmp_path)]) == 2


def test_a_bad_tokenizer_is_bad_input_even_in_a_dry_run(tmp_path, capsys):
    for spec, message in (("wrod", "--tokenizer 'wrod': not one of word, byte, bpe[:VOCAB]"),
                          ("bpe:2", "--tokenizer 'bpe:2': the vocabulary size after ':' must be an integer >= 3")):
        assert main(["run", "--models", "transformer", "--tokenizer", spec, "--dry-run",
                     "--output-dir", str(tmp_path / "o")]) == 2
        assert message in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o").exists()


def test_list_one_kind(capsys):
    from mkeval import get_registry

    assert main(["list", "models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in data["model"]] == sorted(get_registry().names("model"))
    assert "task" not in data and "dataset" not in data


def test_a_dry_run_with_tasks_counts_the_downstream_jobs(tmp_path, capsys):
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "toy.yaml").write_text("name: toy\nkind: multiple_choice\nmetrics: [accuracy]\ninputs: ['{q}']\n"
                                   "label: label\nlabels: [0, 1]\nchoices: [a, b]\nlocal:\n  - format: jsonl\n"
                                   "    files: {train: t.jsonl, eval: e.jsonl}\n")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("t.jsonl", "e.jsonl"):
        (data / name).write_text('{"q": "x", "label": 0}\n{"q": "y", "label": 1}\n')
    assert main(["run", "--models", "bk,transformer", "--tasks", "toy", "--include-path", str(spec), "--seeds", "0,1",
                 "--data-dir", str(data), "--dry-run", "--output-dir", str(tmp_path / "o")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert ("4 downstream jobs: 1 task(s) for each of 4 unit(s): bk_seed0, transformer_seed0, bk_seed1, "
            "transformer_seed1") in printed
