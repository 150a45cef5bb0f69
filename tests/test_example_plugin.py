"""The example third-party plugin, installed the way a user would, shows up in list and runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "mkeval-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # a build writes into the source tree; keep the repo clean
    # --no-build-isolation: build with this environment's setuptools, offline
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {**os.environ, "PYTHONPATH": str(target)}


def test_example_plugin_appears_in_list(installed):
    proc = subprocess.run([sys.executable, "-m", "mkeval", "list", "--json"], capture_output=True, text=True,
                          env=installed)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    models = {m["name"]: m["distribution"] for m in data["model"]}
    datasets = {d["name"]: d["distribution"] for d in data["dataset"]}
    assert models["gru"] == "mkeval-example-plugin"
    assert datasets["repeat"] == "mkeval-example-plugin"


def test_example_plugin_runs_beside_a_built_in_model(installed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "gru,transformer", "--datasets",
                           "repeat", "--seq-len", "16", "--train-tokens", "2048", "--batch-size", "8",
                           "--eval-interval", "8", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, env=installed)
    assert proc.returncode == 0, proc.stderr
    gru = json.loads((tmp_path / "gru_repeat_seq16_bits32.json").read_text())
    assert gru["config"]["model"]["distribution"] == "mkeval-example-plugin"
    assert gru["config"]["dataset"]["name"] == "repeat"
    # the pattern is deterministic after one period: a GRU learns it
    assert gru["test_perplexity"] < 4.0
    proc = subprocess.run([sys.executable, "-m", "mkeval", "check", "gru"], capture_output=True, text=True,
                          env=installed)
    assert proc.returncode == 0, proc.stdout


def test_a_third_party_benchmark_group_aggregates_and_reports_like_glue(installed, tmp_path):
    """The example registers two tasks in its own group `arith` and the group's aggregator; the unit
    summary holds the aggregator's section and `mkeval report` shows its row, as for GLUE's average."""
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "transformer", "--tasks", "arith",
                           "--data-dir", str(EXAMPLE / "data"), "--output-dir", str(tmp_path), "--limit", "24"],
                          capture_output=True, text=True, env=installed)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "transformer_downstream.json").read_text())
    section = summary["arith"]
    tasks = {t: json.loads((tmp_path / f"downstream/transformer/{t}.json").read_text())
             for t in ("arith_even", "arith_less")}
    accuracies = {t: r["finetune"]["metrics"]["accuracy"] for t, r in tasks.items()}
    assert section["accuracies"] == accuracies and section["complete"]
    assert section["mean_accuracy"] == pytest.approx(sum(accuracies.values()) / 2)
    assert "arith" in summary["benchmark_groups"] and "other" not in summary
    report = subprocess.run([sys.executable, "-m", "mkeval", "report", str(tmp_path)], capture_output=True,
                            text=True, env=installed)
    assert report.returncode == 0, report.stderr
    row = next(line for line in report.stdout.splitlines() if "(mean accuracy)" in line)
    assert "arith" in row and f"{section['mean_accuracy']:.4f}" in row
