"""The CPUs this process can really use, the intra-op thread count chosen from them, and a
work-sharing loop that keeps going when one of those CPUs is taken by another process.

``os.cpu_count()`` counts the machine, not what the process may use: a container limited by a
CPU quota, or a process pinned to some cores, sees every core and then runs more threads than
it gets CPUs, and every barrier waits for a thread that is not running. The rule
(``choose_threads``), first match wins:

1. an explicit request (``--threads``), a positive integer;
2. ``OMP_NUM_THREADS``, when set to a positive integer (the user already chose);
3. ``floor(min(affinity CPUs, cgroup CPU quota))``, at least 1: affinity from
   ``os.sched_getaffinity``, the quota from cgroup v2 ``cpu.max`` or cgroup v1
   ``cpu.cfs_quota_us / cpu.cfs_period_us``, the smallest along the process's cgroup path.
   A fractional quota rounds down: 1.5 CPUs of quota give one thread, since a second
   thread would be throttled for part of every period and the first would wait for it.

Neither affinity nor a quota sees another process keeping a core busy. ``share_work`` is for
that case: the caller works too and pieces of work are claimed one at a time, so a helper
thread that gets no CPU claims none and nobody waits for it (numba's ``parallel=True``
workqueue splits work statically and meets every thread twice per launch; with one of two
cores busy it ran 15x slower than one thread, measured).

Why hand-written: ``loky.cpu_count`` (joblib) rounds a quota up and does not expose its
sources for tests; ``psutil`` and ``os.process_cpu_count`` know affinity only.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mkeval.errors import UsageError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


# --------------------------------------------------------------------------- what the process may use
def affinity_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_in(directory: Path) -> float | None:
    """CPUs allowed by the quota files in one cgroup directory (None: unlimited or none there)."""
    text = _read(directory / "cpu.max")  # v2: "max 100000" or "150000 100000"
    if text:
        quota, _, period = text.partition(" ")
        if quota != "max":
            try:
                return int(quota) / int(period or 100000)
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")  # v1
    try:
        if quota is not None and period is not None and int(quota) > 0 and int(period) > 0:
            return int(quota) / int(period)
    except ValueError:
        pass
    return None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup directories holding CPU quota files, from its own up to the root."""
    bases: list[tuple[Path, str]] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2 unified hierarchy
            bases.append((root, path))
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu, or cpu,cpuacct
            for mount in (root / "cpu", root / controllers):
                bases.append((mount, path))
    bases += [(root, "/"), (root / "cpu", "/")]  # no /proc/self/cgroup: the root files, if any
    dirs: list[Path] = []
    for base, path in bases:
        here = base / path.strip("/")
        while True:
            if here not in dirs:
                dirs.append(here)
            if here == base:
                break
            here = here.parent
    return dirs


def cgroup_cpu_quota(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """CPUs allowed by the cgroup CPU quota (the smallest along the process's cgroup path), or
    None when there is none (unlimited, not Linux, unreadable). Reads under ``CGROUP_ROOT``
    and ``PROC_CGROUP`` unless given other paths."""
    dirs = _cgroup_dirs(root or CGROUP_ROOT, proc_cgroup or PROC_CGROUP)
    quotas = [q for q in (_quota_in(d) for d in dirs) if q is not None]
    return min(quotas) if quotas else None


def usable_cpus() -> float:
    """CPUs the process can really use: its affinity, capped by the cgroup quota (may be fractional)."""
    quota = cgroup_cpu_quota()
    cpus = float(affinity_cpus())
    return min(cpus, quota) if quota is not None else cpus


# --------------------------------------------------------------------------- the choice
def _positive_int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if number >= 1 else None


def choose_threads(requested: int | None = None) -> int:
    """Intra-op threads by the rule in the module docstring; UsageError if ``requested`` is not a positive integer."""
    if requested is not None:
        if isinstance(requested, bool) or _positive_int(requested) is None or int(requested) != requested:
            raise UsageError(f"--threads must be a positive integer, got {requested!r}")
        usable = usable_cpus()
        if requested > usable:
            log.warning("%d threads requested, but this process can use %.3g CPUs (affinity and cgroup quota): "
                        "expect threads to wait for each other", requested, usable)
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS")
    if env is not None and _positive_int(env) is not None:
        return _positive_int(env)
    return max(1, math.floor(usable_cpus()))


def describe(threads: int | None = None) -> dict[str, Any]:
    """What the choice was made from, for benchmark and run records."""
    return {
        "threads": choose_threads() if threads is None else threads,
        "affinity_cpus": affinity_cpus(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "os_cpu_count": os.cpu_count(),
    }


# --------------------------------------------------------------------------- sharing work
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _helpers(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < count:
            _pool, _pool_size = ThreadPoolExecutor(max_workers=count, thread_name_prefix="mkeval-share"), count
        return _pool


def share_work(task: Callable[[int, int], None], n_items: int, threads: int, piece: int) -> None:
    """Run ``task(start, stop)`` over ``[0, n_items)`` in pieces of ``piece`` items, on
    ``threads`` threads counting the caller.

    Pieces are claimed one at a time and the caller claims too, so a helper thread that gets
    no CPU claims nothing and is not waited for; only a piece already started is waited for.
    ``task`` must release the GIL to run in parallel (numba ``nogil=True``). Results must not
    depend on which thread ran a piece. An exception in any piece is raised here.
    """
    starts = range(0, n_items, max(1, piece))
    if threads < 2 or len(starts) < 2:
        task(0, n_items)
        return
    claims = iter(starts)  # a range iterator's next() is atomic under the GIL
    left = [len(starts)]
    errors: list[BaseException] = []
    lock, finished = threading.Lock(), threading.Event()

    def work() -> None:
        for start in claims:
            try:
                if not errors:
                    task(start, min(start + piece, n_items))
            except BaseException as exc:  # re-raised by the caller
                errors.append(exc)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

    pool = _helpers(threads - 1)
    helpers = [pool.submit(work) for _ in range(threads - 1)]
    work()
    finished.wait()
    for helper in helpers:
        helper.cancel()  # never started: nothing to wait for
    if errors:
        raise errors[0]
