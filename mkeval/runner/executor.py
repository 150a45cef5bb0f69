"""The executor: one loop over the plan's jobs, for every kind of job.

It skips a job whose result exists with the same hash (``--resume``), runs the others in
order (a job whose dependency did not finish fails with that reason), isolates failures (the
traceback goes to ``failures/``, the run goes on), reports progress, and rewrites the run
summary after every job. Each job reads its inputs from files and writes its own result
atomically, so the loop can be split across processes (``--shard``) or machines. At the end,
the summaries are rebuilt from the result files: the multi-dataset file per model and each
unit's downstream summary.
"""

from __future__ import annotations

import datetime
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.taskdata import TaskData, load_task_data
from ..data.text import apply_split_map
from ..engine.distributed import SINGLE, World
from ..engine.lm import evaluate_cell, finish_cell, run_cell
from ..engine.tasks import RunOptions, evaluate_task, record_failed_task
from ..errors import CellFailed, UsageError
from ..protocol import Protocol
from ..registry import Registry
from ..registry.contracts import DataRequest, LMData
from ..results import (SUMMARY_FILE, CellResult, CellStatus, read_json_file, remove_stale_temp_files, write_json,
                       write_text)
from .plan import Job, Plan, PrecisionEval, TaskUnit, TrainCell
from .summaries import write_summaries

log = logging.getLogger(__name__)
Progress = Callable[..., None]


@dataclass
class RunContext:
    """What every job of a run shares: the registry, protocol, paths, device, and in-process caches
    (loaded datasets and task data, the runtime contract checks) that change no result."""

    registry: Registry
    protocol: Protocol
    out: Path
    device: torch.device
    data_dir: Path | None
    options: RunOptions
    readers: dict[str, Any]
    resume: bool = False
    progress: Progress | None = None
    run_info: dict[str, Any] = field(default_factory=dict)
    summary_file: str = SUMMARY_FILE  # a shard's own run summary: run_summary.shard-I-of-N.json
    jobs: dict[str, Job] = field(default_factory=dict)  # every job of the plan by name (what a job needs)
    world: World = SINGLE  # torchrun's data-parallel ranks: rank 0 writes, training cells run on all
    checks: dict[Any, Any] = field(default_factory=dict)
    lm_cache: dict[tuple[str, int], LMData] = field(default_factory=dict)
    task_cache: dict[str, TaskData] = field(default_factory=dict)

    def lm_data(self, job: TrainCell | PrecisionEval) -> LMData:
        """The job's dataset at its length: loaded once per (dataset, seq_len), the same for every model."""
        plan = job.plan
        key = (plan.cell.dataset, plan.cell.seq_len)
        if key not in self.lm_cache:
            spec = self.registry.get("dataset", plan.cell.dataset)
            data = spec.load(data_request(self.protocol, plan.cell.seq_len, self.data_dir, plan.split_map,
                                          plan.dataset_options))
            self.lm_cache[key] = data if spec.maps_splits else apply_split_map(data, plan.split_map)
        return self.lm_cache[key]

    def task_data(self, job: TaskUnit) -> TaskData:
        if job.task.name not in self.task_cache:
            o = self.options
            self.task_cache[job.task.name] = load_task_data(job.task, self.data_dir, o.skip_bad_rows, o.limit,
                                                            o.dev_holdout, self.protocol.data_seed, self.readers)
        return self.task_cache[job.task.name]


def data_request(protocol: Protocol, seq_len: int, data_dir: Path | None, split_map: dict[str, str],
                 options: dict[str, Any] | None = None) -> DataRequest:
    """What every model of a run asks a dataset for: the same data, tokenizer and budgets."""
    evals = (protocol.eval_tokens, protocol.test_tokens)
    return DataRequest(seq_len=seq_len, train_tokens=protocol.train_tokens, seed=protocol.data_seed,
                       data_dir=data_dir, tokenizer=protocol.tokenizer, split_map=split_map,
                       eval_tokens=0 if 0 in evals else max(evals), options=options or {})


# --------------------------------------------------------------------------- one job
def finished(job: Job, ctx: RunContext) -> bool:
    """A result of this job (same hash) is already in the output directory."""
    data, why = read_json_file(job.result_path(ctx.out)) if job.result_path(ctx.out).exists() else (None, "absent")
    if why is not None:
        return False
    if isinstance(job, TaskUnit):
        return data.get("task_hash") == job.job_hash and data.get("status") in ("ok", "degenerate")
    return data.get("cell_hash") == job.job_hash and data.get("status") == "ok" and \
        data.get("schema_version") == CellResult.__dataclass_fields__["schema_version"].default


def resumable(job: Job, ctx: RunContext) -> bool:
    """``finished``, as rank 0 sees it for a job every data-parallel rank runs (a training cell)."""
    done = finished(job, ctx)
    return ctx.world.agree(done, ctx.device) if isinstance(job, TrainCell) else done


def run_job(job: Job, ctx: RunContext) -> None:
    """Run one job and write its result; raises when it cannot finish."""
    if isinstance(job, TrainCell):
        result = run_cell(job.plan, ctx.lm_data(job), ctx.protocol, ctx.registry, ctx.out, ctx.device,
                          ctx.run_info, ctx.progress, ctx.checks, ctx.resume, ctx.world)
        if result is not None:  # rank 0 (or the only process)
            write_json(job.result_path(ctx.out), result.to_json())
            finish_cell(ctx.out, result)
    elif isinstance(job, PrecisionEval):
        base_path = ctx.out / f"{job.needs[0]}.json"
        data, why = read_json_file(base_path)
        if why is not None:
            raise CellFailed(f"its training cell {job.needs[0]} did not finish ({why}), so there is no checkpoint "
                             "to evaluate at this precision")
        result = evaluate_cell(job.plan, CellResult.from_json(data), ctx.lm_data(job), ctx.protocol, ctx.registry,
                               ctx.out, ctx.device, ctx.run_info)
        write_json(job.result_path(ctx.out), result.to_json())
    elif isinstance(job, TaskUnit):
        data = ctx.task_data(job) if job.skipped is None else None
        evaluate_task(job.unit, job.task, data, job.skipped, ctx.protocol, ctx.registry, ctx.out, ctx.device,
                      ctx.options, job.job_hash, ctx.run_info, ctx.checks)
    else:  # pragma: no cover - a new job kind must be added here
        raise TypeError(f"no runner for {type(job).__name__}")


def record_failure(job: Job, ctx: RunContext, message: str, tb: str) -> str:
    """The traceback file of a failed job (and, for a task, its failed result file); returns the file."""
    name = job.name.replace("/", ".")
    path = ctx.out / "failures" / f"{name}.traceback.txt"
    write_text(path, tb)
    relative = str(path.relative_to(ctx.out))
    if isinstance(job, TaskUnit):
        record_failed_task(job.unit, job.task, ctx.protocol, ctx.options, job.job_hash, ctx.run_info, ctx.out,
                           message, relative)
    return relative


# --------------------------------------------------------------------------- the loop
def execute(plan: Plan, ctx: RunContext, jobs: list[Job] | None = None,
            unreadable: dict[Path, str] | None = None) -> list[CellStatus]:
    """Run ``jobs`` (default: the whole plan) in order; returns one status per job."""
    jobs = plan.jobs if jobs is None else jobs
    ctx.jobs = plan.by_name()
    if not ctx.world.main:  # the other data-parallel ranks take part in training cells only, and write nothing
        return [_one(j, i, ctx, {}, {}) for i, j in enumerate(jobs) if isinstance(j, TrainCell)]
    ctx.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(ctx.out)
    statuses: list[CellStatus] = []
    state: dict[str, str] = {}  # job name -> ok | resumed | failed
    announce_plan(ctx, jobs)
    for index, job in enumerate(jobs):
        status = _one(job, index, ctx, state, unreadable or {})
        statuses.append(status)
        state[job.name] = status.status
        write_run_summary(ctx, statuses)
    return statuses


def announce_plan(ctx: RunContext, jobs: list[Job]) -> None:
    """The progress event that opens a run: the cells and the downstream jobs it will run."""
    if ctx.progress:
        ctx.progress("plan", cells=[j.name for j in jobs if not isinstance(j, TaskUnit)],
                     training=[j.name for j in jobs if isinstance(j, TrainCell)],
                     tasks=[j.name for j in jobs if isinstance(j, TaskUnit)])


def _one(job: Job, index: int, ctx: RunContext, state: dict[str, str], unreadable: dict[Path, str]) -> CellStatus:
    identity = job.plan.identity if isinstance(job, (TrainCell, PrecisionEval)) else job.unit.identity()
    status = CellStatus(job.name, job.job_hash, "resumed", job.result_path(ctx.out).name, config=identity,
                        kind=job.kind)
    event = ("task_start", "task_end") if isinstance(job, TaskUnit) else ("cell_start", "cell_end")
    names = {"unit": job.unit.name, "task": job.task.name} if isinstance(job, TaskUnit) else {"name": job.name}
    if ctx.resume and resumable(job, ctx):
        if ctx.progress:
            ctx.progress(event[1], index=index, status="resumed", **names)
        return status
    bad = unreadable.get(job.result_path(ctx.out))
    if bad is not None:
        status.note = f"its result file {job.result_path(ctx.out).name} was unreadable ({bad}); the job was rerun"
        log.warning("%s: %s", job.name, status.note)
    if ctx.progress:
        steps = ctx.protocol.steps(job.plan.cell.seq_len) if isinstance(job, TrainCell) else 0
        ctx.progress(event[0], index=index, steps=steps, **names)
    try:
        missing = [n for n in job.needs if state.get(n) == "failed"]
        if missing:
            raise CellFailed(f"it needs {', '.join(missing)}, which did not finish")
        elsewhere = [n for n in job.needs if n not in state and not finished(ctx.jobs[n], ctx)]
        if elsewhere:  # not run by this process (another shard's job): only its result file can tell
            raise CellFailed(f"it needs {', '.join(elsewhere)}, which this process does not run and whose result "
                             "is not in the output directory yet; rerun with --resume once it has finished")
        run_job(job, ctx)
        status.status = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one failing job must not stop the others
        message = str(exc) if isinstance(exc, (CellFailed, UsageError)) else f"{type(exc).__name__}: {exc}"
        log.error("%s failed: %s", job.name, message)
        status.status, status.error, status.result_file = "failed", message, None
        if ctx.world.main:
            status.traceback_file = record_failure(job, ctx, message, traceback.format_exc())
    if ctx.progress:
        ctx.progress(event[1], index=index, status=status.status, **names)
    return status


def write_run_summary(ctx: RunContext, statuses: list[CellStatus], finished_at: bool = False) -> None:
    cells = [s for s in statuses if s.kind != "task"]
    tasks = [s for s in statuses if s.kind == "task"]
    counts = {s: sum(1 for c in statuses if c.status == s) for s in ("ok", "resumed", "failed")}
    run = dict(ctx.run_info, **({"finished": now()} if finished_at else {}))
    write_json(ctx.out / ctx.summary_file, {"run": run, "protocol": ctx.protocol.to_dict(),
                                        "protocol_hash": ctx.protocol.hash, "counts": counts,
                                        "cells": [c.__dict__ for c in cells], "tasks": [t.__dict__ for t in tasks]})


def finalize(plan: Plan, ctx: RunContext, statuses: list[CellStatus], specs: dict[str, Any]) -> dict[str, Any]:
    """The summaries, from the result files (those whose every job ran here: a shard writes no summary
    that another shard's jobs feed); the final run summary."""
    written = write_summaries(plan, ctx.out, ctx.registry, ctx.protocol, ctx.options, ctx.run_info, statuses, specs,
                              owned={s.name for s in statuses})
    write_run_summary(ctx, statuses, finished_at=True)
    return written


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
