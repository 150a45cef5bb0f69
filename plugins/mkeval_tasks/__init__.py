"""First-party downstream tasks: GLUE, SuperGLUE, SQuAD v1.1 and MMLU (57 subjects).

Their YAML specs ship inside this package (``tasks/``, package data; the repository's top-level
``tasks`` is a link to it). The plugin also owns what only these benchmarks need: the readers of
SQuAD's, MultiRC's and ReCoRD's official files, and the aggregators that summarise a unit's
results per benchmark (GLUE/SuperGLUE leaderboard averages, SQuAD, MMLU by category). A
third-party package registers its own folders, readers and groups the same way, and a run can
add spec folders with ``--include-path``.
"""

from __future__ import annotations

from pathlib import Path

import mkeval

from . import groups, readers

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@mkeval.hookimpl
def register_tasks(register):
    if not TASKS_DIR.is_dir():
        raise mkeval.PluginError(f"the task specs folder {TASKS_DIR} is missing from the installed package; "
                                 "reinstall mkeval")
    for spec in mkeval.task_specs(TASKS_DIR):
        register(spec)


@mkeval.hookimpl
def register_task_readers(register):
    register(mkeval.ReaderSpec("squad", readers.read_squad, "SQuAD v1.1 JSON: one row per question"))
    register(mkeval.ReaderSpec("multirc", readers.read_multirc, "SuperGLUE MultiRC JSON lines: one row per answer"))
    register(mkeval.ReaderSpec("record", readers.read_record, "SuperGLUE ReCoRD JSON lines: one row per query"))


@mkeval.hookimpl
def register_benchmark_groups(register):
    register(mkeval.GroupSpec("glue", groups.leaderboard, description="GLUE: the leaderboard average"))
    register(mkeval.GroupSpec("superglue", groups.leaderboard, description="SuperGLUE: the leaderboard average"))
    register(mkeval.GroupSpec("squad", groups.squad, description="SQuAD v1.1: exact match and F1"))
    register(mkeval.GroupSpec("mmlu", groups.mmlu, pool=True,
                              description="MMLU: accuracy over all questions, by category, and the subjects' mean"))
