"""``mkeval.run``: a request, checked, planned and executed.

``mkeval.run(...)``, ``mkeval run`` and a ``--config`` file all build one ``RunRequest``;
everything is checked before the first job (``validate``); the executor runs the jobs with
resume and failure isolation and rebuilds the summaries from the result files.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.taskdata import registered_readers
from ..data.text import parse_split_map
from ..engine import distributed
from ..engine.lm import git_revision
from ..engine.tasks import RunOptions
from ..errors import UsageError
from ..protocol import Protocol
from ..registry import Registry, get_registry
from ..results import CellResult, CellStatus, ResultScan, scan_results
from ..threads import choose_threads
from .executor import RunContext, execute, finalize, finished, now
from .plan import (Plan, TaskUnit, included_tasks, plan_cells, plan_sizing, plan_tasks, plan_units,
                   resolve_precisions, resolve_tasks)
from .request import RunRequest, build_request
from .shards import parse_shard, shard_jobs
from .validate import (check_models, check_precisions, check_writable, load_tasks, preload_data,
                       resolve_device)

DEFAULT_DATASETS = ("markov",)


@dataclass
class RunResult:
    """What ``mkeval.run`` returns."""

    cells: list[CellStatus]
    results: list[CellResult]
    output_dir: Path | None
    protocol: Protocol
    dry_run: bool = False
    multi_dataset_files: list[Path] = field(default_factory=list)
    downstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit -> its _downstream.json content
    downstream_files: list[Path] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)  # (spec, data fingerprint, why skipped) per task
    task_jobs: list[CellStatus] = field(default_factory=list)
    plan: Plan | None = None

    @property
    def failed_tasks(self) -> list[tuple[str, str, str]]:
        """``(unit, task, error)`` for every downstream task that failed."""
        return [(u, t, e) for u, s in self.downstream.items() for t, e in s.get("failed", {}).items()]

    @property
    def failed(self) -> list[CellStatus]:
        return [c for c in self.cells if c.status == "failed"]


def run(config: str | Path | None = None, protocol: Protocol | None = None,
        progress: Callable[..., None] | None = None, registry: Registry | None = None, **options: Any) -> RunResult:
    """Run the matrix models x datasets x seq_lens x precisions x seeds (and downstream tasks); what
    ``mkeval run`` does. ``options`` are ``RunRequest``'s fields (``models``, ``datasets``, ``tasks``,
    ``seq_lens`` or ``seq_len``, ``seeds``, ``output_dir`` ...; docs/protocol.md) and any protocol
    field (``lr=1e-3``); ``config`` a YAML file of both; ``protocol`` the base protocol.
    """
    registry = registry or get_registry()
    if "seq_len" in options:  # the CLI's name for the protocol's seq_lens
        options["seq_lens"] = options.pop("seq_len")
    request_names = {f.name for f in dataclasses.fields(RunRequest)}
    explicit = {k: v for k, v in options.items() if k in request_names}
    protocol_fields = {k: v for k, v in options.items() if k not in request_names}
    request, protocol, where = build_request(config, explicit, protocol, protocol_fields)
    plan, ctx, tasks = prepare(request, protocol, registry, where, progress)
    shard = parse_shard(request.shard)
    jobs = shard_jobs(plan.jobs, shard) if shard else plan.jobs
    scan = scan_results(ctx.out) if ctx.resume and ctx.out.is_dir() else ResultScan()
    if request.get("dry_run", False):
        done = set(scan.finished)
        statuses = [CellStatus(j.name, j.job_hash, "resumed" if j.job_hash in done else "planned",
                               config=j.plan.identity, kind=j.kind) for j in jobs if not isinstance(j, TaskUnit)]
        return RunResult(statuses, [], None, protocol, dry_run=True, tasks=tasks, plan=plan)
    check_writable(ctx.out)
    ray_settings = execution(request, ctx, registry, shard)
    preload_data([j for j in jobs if not isinstance(j, TaskUnit) and not (ctx.resume and finished(j, ctx))], ctx)
    threads = torch.get_num_threads()
    try:
        if ray_settings is not None:
            from .ray_executor import execute_ray

            ctx.lm_cache.clear()  # loaded to check the data (and fill this node's token cache); workers load their own
            statuses = execute_ray(plan, ctx, jobs, scan.unreadable, ray_settings, bool(ctx.readers))
        else:
            torch.set_num_threads(ctx.run_info["threads"])
            statuses = execute(plan, ctx, jobs, unreadable=scan.unreadable)
    finally:
        torch.set_num_threads(threads)
    if not ctx.world.main:  # data-parallel ranks other than 0 write no summary
        return RunResult([], [], ctx.out, protocol, plan=plan)
    specs = {n: registry.get("task", n).spec for n in registry.names("task")}
    specs.update({c.name: c for c, _, _ in tasks})
    written = finalize(plan, ctx, statuses, specs)
    cells = [s for s in statuses if s.kind != "task"]
    from .summaries import read_cells

    return RunResult(cells, read_cells(plan, ctx.out, {s.name for s in cells}), ctx.out, protocol,
                     multi_dataset_files=written["multi_dataset"], downstream=written["downstream"],
                     downstream_files=written["downstream_files"], tasks=tasks,
                     task_jobs=[s for s in statuses if s.kind == "task"], plan=plan)


def prepare(request: RunRequest, protocol: Protocol, registry: Registry, where: dict[str, str],
            progress: Callable[..., None] | None) -> tuple[Plan, RunContext, list[Any]]:
    """Check the request and build the plan and the run's context (nothing is written)."""
    models = request.models or registry.names("model")
    if not models:
        raise UsageError("no model plugins are installed; see `mkeval list`")
    for name in models:
        registry.get("model", name, option="--models")
    pretrain = request.datasets is not None
    datasets = request.datasets or list(DEFAULT_DATASETS)
    for name in datasets:
        registry.get("dataset", name, option="--datasets")
    precisions = resolve_precisions(registry, request.precisions, request.bits, request.evaluate_at)
    configs = []
    if request.tasks:
        configs = resolve_tasks(registry, request.tasks, included_tasks(request.include_path))
        synthetic = [d for d in datasets if registry.get("dataset", d).synthetic] if pretrain else []
        if synthetic:
            raise UsageError(f"--tasks: dataset(s) {', '.join(synthetic)} are synthetic and have no text tokenizer "
                             "to read task text; pretrain on a text dataset (e.g. --datasets wikitext-2) or leave "
                             "out --datasets to fine-tune from scratch")
    elif request.include_path is not None:
        raise UsageError("--include-path: given without --tasks")
    if request.limit is not None and not request.tasks:
        at, n = where.get("limit"), request.limit  # from a config file: its file:line and key names
        raise UsageError(f"{f'{at}: limit: {n}' if at else f'--limit {n}'}: limits the examples of downstream "
                         f"tasks, and this run has no --tasks; to evaluate fewer windows of a language-modelling "
                         f"cell use {f'limit_windows: {n}' if at else f'--limit-windows {n}'}")
    check_tokenizer(protocol.tokenizer)
    options = request.get("model_options", {})
    check_models(registry, protocol, models, options, where)
    device = resolve_device(request.device)
    check_precisions(registry, precisions, device)
    sizing = plan_sizing(registry, models, options, request.match_params)
    splits = parse_split_map(request.split_map, request.get("allow_test_contamination", False))
    data_options = request.get("dataset_options", {})
    for name in data_options:
        registry.get("dataset", name, option="dataset_options")
    data_dir = Path(request.data_dir).resolve() if request.data_dir is not None else None
    if data_dir is not None and not data_dir.is_dir():
        raise UsageError(f"--data-dir: {request.data_dir} is not a directory")
    run_options = RunOptions(request.limit, request.get("dev_holdout", False), request.get("skip_bad_rows", False))
    out = Path(request.get("output_dir", "results"))
    ctx = RunContext(registry, protocol, out, device, data_dir, run_options,
                     registered_readers(registry) if configs else {},
                     request.get("resume", False), progress)
    ctx.run_info = {"started": now(),
                    "git_revision": git_revision(), "resume": ctx.resume, "protocol_hash": protocol.hash}
    cells = plan_cells(registry, protocol, models, datasets, precisions, options, data_dir, request.limit_windows, sizing,
                       splits, data_options) if pretrain or not configs else []
    tasks = load_tasks(configs, ctx) if configs else []
    units = plan_units(registry, protocol, models, precisions, options, sizing, cells) if configs else []
    jobs = cells + plan_tasks(units, tasks, protocol, dataclasses.asdict(run_options))
    ctx.run_info["jobs"] = len(jobs)
    return Plan(jobs, datasets if cells else [], units), ctx, tasks


def check_tokenizer(spec: str) -> None:
    """A bad --tokenizer is bad input before any work (and in --dry-run), not an error after the plan:
    built-in names have their arguments checked, any other is loaded as a local Hugging Face tokenizer."""
    from ..data.tokenizers import make_tokenizer, needs_training

    if not needs_training(spec):
        make_tokenizer(spec)


EXECUTORS = ("local", "ray")


def execution(request: RunRequest, ctx: RunContext, registry: Registry, shard: Any) -> Any:
    """Check how the jobs are to be executed (``--executor``, ``--shard``, torchrun, ``--threads``) and
    record it in the run info; returns the Ray settings with ``--executor ray``, else None."""
    executor = request.get("executor", "local")
    if executor not in EXECUTORS:
        raise UsageError(f"--executor: unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    ray_options = [f"--{n.replace('_', '-')}" for n in ("ray_address", "ray_cpus", "ray_gpus", "ray_retries")
                   if getattr(request, n) is not None]
    if ray_options and executor != "ray":
        raise UsageError(f"{ray_options[0]}: only with --executor ray")
    if distributed.launched():
        if executor != "local" or shard is not None:
            raise UsageError(f"{'--shard' if shard is not None else '--executor ray'}: not under torchrun, which "
                             "already splits each training cell across its processes; use one way to scale out")
        size = int(os.environ["WORLD_SIZE"])
        if ctx.protocol.batch_size % size:
            raise UsageError(f"--batch-size {ctx.protocol.batch_size}: not divisible by the {size} torchrun "
                             "processes; the global batch is split evenly across them")
        ctx.device = distributed.rank_device(ctx.device)
        ctx.world = distributed.join(ctx.device)
        if not ctx.world.main:
            ctx.progress = None
    ray_settings = None
    if executor == "ray":
        from .ray_executor import require_ray, settings

        if shard is not None:
            raise UsageError("--shard: not with --executor ray, which schedules the whole plan on the cluster")
        if registry is not get_registry():
            raise UsageError("--executor ray: Ray workers use the installed plugins; a registry= object cannot be "
                             "sent to them")
        require_ray()
        ray_settings = settings(request, ctx.device)
    threads = ray_settings.threads if ray_settings else choose_threads(request.threads)
    ctx.run_info.update(executor=executor, shard=None if shard is None else str(shard), threads=threads,
                        world_size=ctx.world.size, **({"backend": ctx.world.backend} if ctx.world.parallel else {}))
    if shard is not None:
        ctx.summary_file = shard.summary_file
    return ray_settings
