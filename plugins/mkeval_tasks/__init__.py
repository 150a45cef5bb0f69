"""First-party downstream tasks: every YAML spec in the repository's ``tasks/`` folder.

GLUE, SuperGLUE, SQuAD v1.1 and MMLU (57 subjects). Third-party packages register their
own folders the same way (``register_tasks`` calling ``mkeval.task_specs(folder)``), and a
run can add one with ``--include-path``.
"""

from __future__ import annotations

from pathlib import Path

import mkeval

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


@mkeval.hookimpl
def register_tasks(register):
    if not TASKS_DIR.is_dir():
        raise mkeval.PluginError(f"the task specs folder {TASKS_DIR} is missing; install mkeval from a checkout "
                                 "(pip install -e .) so that tasks/ sits beside plugins/")
    for spec in mkeval.task_specs(TASKS_DIR):
        register(spec)
