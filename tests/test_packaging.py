"""A wheel, installed without the checkout, holds everything: the task specs ship as package data.

The wheel is built from a copy of the repository and installed (non-editable) into a folder of its
own; the child process sees that folder and the dependencies of this environment, but not the
editable checkout (its metadata would register the plugins twice), so it runs only the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import shared_data_or_skip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist", "__pycache__",
                                                  ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = (tmp / "dist").glob("mkeval-*.whl")
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # this environment's dependencies, without the editable mkeval (its finder and metadata)
    deps = tmp / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.startswith(("mkeval", "__editable__", "_mkeval")):
            (deps / entry.name).symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{deps}", "PYTHONNOUSERSITE": "1", "COLUMNS": "200"}
    python = getattr(sys, "_base_executable", sys.executable)
    return wheel, python, env, tmp


def _mkeval(wheel_env, *args):
    _, python, env, tmp = wheel_env
    return subprocess.run([python, "-m", "mkeval", *args], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=900)


@pytest.mark.slow
def test_the_wheel_holds_the_task_specs_and_lists_every_task(wheel_env):
    wheel, python, env, tmp = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    specs = [n for n in names if n.startswith("mkeval_tasks/tasks/") and n.endswith(".yaml")]
    assert len(specs) == len(list((ROOT / "tasks").rglob("*.yaml"))) > 70
    where = subprocess.run([python, "-c", "import mkeval, mkeval_tasks; print(mkeval.__file__); "
                                          "print(mkeval_tasks.__file__)"], capture_output=True, text=True, env=env,
                           cwd=tmp)  # not the checkout: '' on sys.path would be it
    assert where.returncode == 0, where.stderr
    assert all(str(tmp / "site") in line for line in where.stdout.split()), where.stdout  # the wheel's, not ours
    proc = _mkeval(wheel_env, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["load_errors"] == []
    tasks = {t["name"] for t in data["task"]}
    assert {"rte", "cola", "squad", "mmlu_anatomy"} <= tasks and len(tasks) == len(specs)


@pytest.mark.slow
def test_the_wheel_runs_a_downstream_task(wheel_env, tmp_path):
    root = shared_data_or_skip()
    proc = _mkeval(wheel_env, "run", "--models", "transformer", "--tasks", "rte", "--data-dir", str(root), "--limit",
                   "16", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "transformer_downstream.json").exists()
