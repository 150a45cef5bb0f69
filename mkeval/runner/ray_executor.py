"""``--executor ray``: the plan's jobs as Ray tasks (``pip install "mkeval[ray]"``).

Each job is one Ray task that runs the local executor's own job step (``executor._one``) in a
worker: the same resume check, failure isolation, traceback file and result file, written to the
shared output directory exactly as one process writes them. A job's dependencies are passed as
the ObjectRefs of the jobs it needs, so Ray starts it only after they finish and hands it their
statuses. Resources per job come from ``--ray-cpus`` / ``--ray-gpus`` (a fraction lets several
small cells share a GPU); a task whose worker dies is rerun up to ``--ray-retries`` times. Each
worker keeps one run context (loaded datasets, task data, contract checks) across the jobs it
runs, and sets its torch threads to ``--threads``. The driver shows jobs running, finished and
failed across the cluster, and rewrites the run summary as jobs finish.
"""

from __future__ import annotations

import logging
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..results import CellStatus
from ..threads import choose_threads
from .executor import RunContext, _one, announce_plan, record_failure, resumable, write_run_summary
from .plan import Job, Plan

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray: Ray is not installed; pip install \"mkeval[ray]\"") from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    address: str | None
    cpus: float
    gpus: float
    retries: int
    threads: int


def settings(request: Any, device: torch.device) -> RaySettings:
    """``--ray-*`` options checked; the threads each job's worker uses."""
    # threads: as asked, else what --ray-cpus reserves, else the local executor's default (same numbers)
    threads = request.threads or (max(1, math.floor(request.ray_cpus)) if request.ray_cpus else choose_threads())
    cpus = request.ray_cpus if request.ray_cpus is not None else float(threads)
    gpus = request.ray_gpus if request.ray_gpus is not None else (0.0 if device.type == "cpu" else 1.0)
    if not cpus > 0:
        raise UsageError(f"--ray-cpus must be positive, got {cpus:g}")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise UsageError(f"--ray-gpus must be a fraction in (0, 1] or a whole number of GPUs, got {gpus:g}")
    if gpus > 0 and device.type == "cpu":
        raise UsageError(f"--ray-gpus {gpus:g} with --device cpu: the jobs would hold GPUs they do not use")
    return RaySettings(request.ray_address, cpus, gpus, request.ray_retries if request.ray_retries is not None
                       else 3, threads)


# --------------------------------------------------------------------------- the worker side
@dataclass(frozen=True)
class WorkerSetup:
    """What a worker rebuilds its run context from (the registry comes from the installed plugins)."""

    key: str  # one run: a worker keeps one context per run
    protocol: Any
    out: Path
    device: str
    data_dir: Path | None
    options: Any
    readers: bool
    resume: bool
    run_info: dict[str, Any]
    threads: int


_contexts: dict[str, RunContext] = {}


def worker_context(setup: WorkerSetup, jobs: dict[str, Job]) -> RunContext:
    if setup.key not in _contexts:
        from ..data.taskdata import registered_readers
        from ..registry import get_registry

        registry = get_registry()
        _contexts.clear()  # a worker serves one run at a time: drop an older run's caches
        _contexts[setup.key] = RunContext(registry, setup.protocol, setup.out, torch.device(setup.device),
                                          setup.data_dir, setup.options,
                                          registered_readers(registry) if setup.readers else {}, setup.resume,
                                          run_info=setup.run_info, jobs=jobs)
    torch.set_num_threads(setup.threads)
    return _contexts[setup.key]


def run_remote(setup: WorkerSetup, jobs: dict[str, Job], name: str, index: int, unreadable: str | None,
               tracker: Any, *needs: dict[str, Any]) -> dict[str, Any]:
    """One job in a Ray worker; returns its status (never raises for a failed job: that is a status)."""
    ctx = worker_context(setup, jobs)
    job = jobs[name]
    if tracker is not None:
        tracker.started.remote(name)
    state = {n["name"]: n["status"] for n in needs}
    bad = {job.result_path(ctx.out): unreadable} if unreadable else {}
    return _one(job, index, ctx, state, bad).__dict__


class Tracker:
    """A Ray actor the workers tell when a job starts (the driver shows what is running)."""

    def __init__(self) -> None:
        self.running: set[str] = set()

    def started(self, name: str) -> None:
        self.running.add(name)

    def snapshot(self) -> list[str]:
        return sorted(self.running)


# --------------------------------------------------------------------------- the driver side
def execute_ray(plan: Plan, ctx: RunContext, jobs: list[Job], unreadable: dict[Path, str], ray_settings: RaySettings,
                readers: bool) -> list[CellStatus]:
    """Submit ``jobs`` (each after the jobs it needs) and collect one status per job, in plan order."""
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if ray_settings.address:
                ray.init(address=ray_settings.address, include_dashboard=False, log_to_driver=False)
            else:
                start_local(ray, _local_cpus())
        except (ConnectionError, ValueError, RuntimeError) as exc:
            if ray_settings.address:
                raise UsageError(f"--ray-address {ray_settings.address}: cannot join the Ray cluster ({exc})") from exc
            raise UsageError(f"--executor ray: cannot start a local Ray instance ({exc}); if RAY_ADDRESS is set, "
                             "pass that cluster as --ray-address instead") from exc
    try:
        check_resources(ray, ray_settings)
        return _submit_and_wait(ray, plan, ctx, jobs, unreadable, ray_settings, readers)
    finally:
        if started_here:
            ray.shutdown()


def start_local(ray: Any, cpus: int) -> None:
    """Start a Ray instance on this machine with ``cpus`` CPUs. Its workers do the work while the
    driver waits, so they run at normal priority, not Ray's default niceness 15, which loses to
    Ray's own daemons on a small machine (unless RAY_worker_niceness is set)."""
    own = "RAY_worker_niceness" not in os.environ
    if own:
        os.environ["RAY_worker_niceness"] = "0"
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    finally:
        if own:
            os.environ.pop("RAY_worker_niceness", None)


def check_resources(ray: Any, rs: RaySettings) -> None:
    """A job asking for more than any node has would wait forever: bad input instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for key, need, option in (("CPU", rs.cpus, "--ray-cpus"), ("GPU", rs.gpus, "--ray-gpus")):
        largest = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if need > largest:
            raise UsageError(f"{option} {need:g}: no node of the Ray cluster has that many {key}s (the largest has "
                             f"{largest:g}); lower it{' or --threads' if key == 'CPU' else ''}")


def _local_cpus() -> int:
    from ..threads import usable_cpus

    return max(1, math.floor(usable_cpus()))


def _submit_and_wait(ray: Any, plan: Plan, ctx: RunContext, jobs: list[Job], unreadable: dict[Path, str],
                     rs: RaySettings, readers: bool) -> list[CellStatus]:
    ctx.jobs = plan.by_name()
    ctx.out.mkdir(parents=True, exist_ok=True)
    setup = WorkerSetup(f"{ctx.run_info.get('started')}:{ctx.protocol.hash}:{ctx.out.resolve()}", ctx.protocol,
                        ctx.out.resolve(), "cuda" if ctx.device.type == "cuda" else str(ctx.device),
                        ctx.data_dir, ctx.options, readers, ctx.resume, ctx.run_info, rs.threads)
    remote = ray.remote(num_cpus=rs.cpus, num_gpus=rs.gpus, max_retries=rs.retries, retry_exceptions=False)(run_remote)
    tracker = ray.remote(num_cpus=0)(Tracker).remote() if ctx.progress else None  # an actor costs a process
    setup_ref, jobs_ref = ray.put(setup), ray.put(ctx.jobs)
    statuses: dict[str, CellStatus] = {}
    refs: dict[str, Any] = {}
    announce_plan(ctx, jobs)
    for index, job in enumerate(jobs):
        if ctx.resume and resumable(job, ctx):  # as the local executor: nothing to submit
            statuses[job.name] = _one(job, index, ctx, {}, {})
            continue
        needs = [refs[n] if n in refs else statuses[n].__dict__ for n in job.needs if n in refs or n in statuses]
        refs[job.name] = remote.options(name=job.name).remote(
            setup_ref, jobs_ref, job.name, index, unreadable.get(job.result_path(ctx.out)), tracker, *needs)
    pending = {ref: name for name, ref in refs.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
        ended = []
        for ref in ready:
            name = pending.pop(ref)
            statuses[name] = _collect(ray, ref, ctx.jobs[name], ctx)
            ended.append((name, statuses[name].status))
        if tracker is not None:
            running = set(ray.get(tracker.snapshot.remote())) - set(statuses)
            failed = sum(1 for s in statuses.values() if s.status == "failed")
            ctx.progress("jobs", total=len(jobs), running=sorted(running), finished=len(statuses) - failed,
                         failed=failed, ended=ended)
        if ready:
            write_run_summary(ctx, [statuses[j.name] for j in jobs if j.name in statuses])
    return [statuses[j.name] for j in jobs]


def _collect(ray: Any, ref: Any, job: Job, ctx: RunContext) -> CellStatus:
    """A finished task's status; a task Ray could not finish (its worker died beyond the retries, or
    a job it needs did) becomes a failed job with the reason."""
    try:
        return CellStatus(**ray.get(ref))
    except ray.exceptions.RayError as exc:
        message = f"Ray could not finish this job: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.error("%s failed: %s", job.name, message)
        status = CellStatus(job.name, job.job_hash, "failed", None, config={}, kind=job.kind, error=message)
        status.traceback_file = record_failure(job, ctx, message, traceback.format_exc())
        return status
