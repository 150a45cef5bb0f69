"""The summaries of a run, rebuilt from its result files alone.

After the jobs (or when ``mkeval report`` / a final ``--resume`` merges the files that shards
wrote), each model's ``{model}_multi_dataset.json`` and each unit's ``{unit}_downstream.json``
are computed from whatever results exist: there is no state to lose and no summary to race on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.tasks import RunOptions
from ..protocol import Protocol
from ..registry import Registry
from ..results import CellResult, CellStatus, read_json_file, write_json
from ..results.aggregate import multi_dataset_summary
from ..results.downstream import TaskResult, summarise_unit
from .plan import Plan, PrecisionEval, TaskUnit, TrainCell


def read_cells(plan: Plan, out: Path, names: set[str] | None = None) -> list[CellResult]:
    """The plan's finished cell results (of the jobs ``names``, default all), in plan order."""
    found = []
    for job in plan.jobs:
        if isinstance(job, (TrainCell, PrecisionEval)) and (names is None or job.name in names):
            data, why = read_json_file(job.result_path(out)) if job.result_path(out).exists() else (None, "absent")
            if why is None and data.get("cell_hash") == job.job_hash:
                found.append(CellResult.from_json(data))
    return found


def group_members(registry: Registry, specs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The registered benchmark groups and, per group, the spec of every task in it (run or not)."""
    groups = {n: registry.get("group", n) for n in registry.names("group")}
    members = {g: {n: c for n, c in specs.items() if g in c.groups} for g in groups}
    return groups, members


def write_summaries(plan: Plan, out: Path, registry: Registry, protocol: Protocol, options: RunOptions,
                    run_info: dict[str, Any], statuses: list[CellStatus], specs: dict[str, Any],
                    owned: set[str] | None = None) -> dict[str, Any]:
    """Write the multi-dataset files (runs with several datasets) and the units' downstream summaries;
    returns ``{"multi_dataset": [paths], "downstream": {unit: summary}, "downstream_files": [paths]}``.

    With ``owned`` (the jobs this process ran: a shard), only the summaries all of whose jobs are
    in it are written, so two shards never write the same file."""
    written: dict[str, Any] = {"multi_dataset": [], "downstream": {}, "downstream_files": []}

    def mine(jobs: list[Any]) -> bool:
        return owned is None or all(j.name in owned for j in jobs)

    if len(plan.datasets) > 1:
        results = read_cells(plan, out)
        for model in dict.fromkeys(j.plan.cell.model for j in plan.of(TrainCell)):
            if not mine([j for j in plan.jobs if isinstance(j, (TrainCell, PrecisionEval))
                         and j.plan.cell.model == model]):
                continue
            failed = [s for s in statuses if s.status == "failed" and s.kind != "task"
                      and s.config.get("cell", {}).get("model") == model]
            errors = {s.config["cell"]["dataset"]: s.error for s in failed}
            path = out / f"{model}_multi_dataset.json"
            write_json(path, multi_dataset_summary(model, [r for r in results if r.model_name == model], errors,
                                                   [s.config["cell"] for s in failed]))
            written["multi_dataset"].append(path)
    groups, members = group_members(registry, specs)
    for unit in plan.units:
        if not mine([j for j in plan.of(TaskUnit) if j.unit.name == unit.name]):
            continue
        results = {}
        for job in plan.of(TaskUnit):
            if job.unit.name == unit.name and job.result_path(out).exists():
                data, why = read_json_file(job.result_path(out))
                if why is None and data.get("task_hash") == job.job_hash:
                    results[job.task.name] = TaskResult.from_json(data)
        if not results:
            continue
        summary = summarise_unit({
            "model_name": unit.model, "unit": unit.name, "seed": unit.seed, "precision": unit.precision,
            "init": "scratch" if unit.pretrained is None else "pretrained",
            "pretrained_from": None if unit.pretrained is None else unit.pretrained.cell,
            "limit": options.limit, "dev_holdout": options.dev_holdout, "skip_bad_rows": options.skip_bad_rows,
            "protocol": protocol.to_dict(), "protocol_hash": protocol.hash, "run": run_info}, results, groups, members)
        path = out / f"{unit.name}_downstream.json"
        data = summary.to_json()
        write_json(path, data)
        written["downstream"][unit.name] = data
        written["downstream_files"].append(path)
    return written
