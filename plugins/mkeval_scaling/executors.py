"""``mkeval bench executors``: the Ray executor's overhead against the local one, same machine, same run.

One matrix of small language-modelling cells (``models`` x 3 seeds on the synthetic ``markov``
data) runs three ways, each into a fresh directory:

- ``local``: the local executor, ``T`` torch threads (T = the CPUs this process may use);
- ``ray, one job at a time``: the Ray executor with ``--ray-cpus T --threads T``, so Ray runs the
  same jobs one after another with the same threads: the difference from ``local`` is the
  executor's overhead (task submission, object transfer, a fresh worker's imports, and Ray's own
  processes taking CPU time from the job's threads);
- ``local, 1 thread`` and ``ray, one job at a time, 1 thread``: the same at ``--threads 1``
  (``--ray-cpus T`` still runs one job at a time), which leaves CPU time to Ray's processes;
- ``ray, parallel, 1 thread``: ``--ray-cpus 1 --threads 1``, as many jobs at once as there are CPUs
  (on CUDA: ``--ray-gpus 1/jobs``, the jobs share the GPU by fractions).

The local Ray instance is started before the timed runs (``ray.init``; its start-up time is
reported apart), as when joining a running cluster, and one untimed local run first pays this
process's one-time costs (imports, compiled kernels), which each Ray worker pays again inside the
timed runs. Each row says whether its numbers equal the local run's at the same threads, bit for
bit. ``repeats`` (default 3) runs each way that many times (median wall time).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import mkeval
from mkeval import BenchmarkResult, UsageError

COLUMNS = ["executor", "jobs", "ray_cpus", "threads", "wall_s", "vs_local", "same_numbers"]
DEFAULT_MODELS = ("bk", "mamba", "transformer")
SEEDS = (0, 1, 2)


def _numbers(directory: Path) -> list[tuple[str, float, list[float]]]:
    out = []
    for path in sorted(directory.glob("*_bits*.json")):
        data = json.loads(path.read_text())
        out.append((path.name, data["test_perplexity"], data["epoch_losses"]))
    return out


def run(seq_lens: Sequence[int] | None = None, batch_size: int | None = None, models: Sequence[str] | None = None,
        repeats: int | None = None, device: str | None = None) -> BenchmarkResult:
    try:
        import ray
    except ImportError:
        raise UsageError("mkeval bench executors: Ray is not installed; pip install \"mkeval[ray]\"") from None
    from mkeval.threads import choose_threads, describe

    if seq_lens is not None and len(seq_lens) != 1:
        raise UsageError("mkeval bench executors: --seq-len takes one length")
    seq_len, batch = (seq_lens or [64])[0], batch_size or 8
    models = list(models or DEFAULT_MODELS)
    repeats = repeats or 3
    device = device or "cpu"
    threads = choose_threads()
    protocol = mkeval.Protocol(batch_size=batch, seq_lens=(seq_len,), train_tokens=batch * seq_len * 40,
                               eval_interval=20, warmup_steps=2, eval_tokens=batch * seq_len * 4,
                               test_tokens=batch * seq_len * 4)
    jobs = len(models) * len(SEEDS)
    gpu_share = 1.0 / jobs if device.startswith("cuda") else None
    parallel = {"ray_gpus": gpu_share} if gpu_share else {}
    ways = [("local", {"threads": threads}, None),
            ("ray, one job at a time", {"executor": "ray", "ray_cpus": float(threads), "threads": threads}, threads),
            ("local, 1 thread", {"threads": 1}, None),
            ("ray, one job at a time, 1 thread", {"executor": "ray", "ray_cpus": float(threads), "threads": 1},
             threads),
            ("ray, parallel, 1 thread", {"executor": "ray", "ray_cpus": 1.0, "threads": 1, **parallel}, 1)]
    started = time.perf_counter()
    # as the Ray executor starts a local instance: workers at normal priority, not Ray's niceness 15
    own = "RAY_worker_niceness" not in os.environ
    if own:
        os.environ["RAY_worker_niceness"] = "0"
    try:
        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
    finally:
        if own:
            os.environ.pop("RAY_worker_niceness", None)
    startup = time.perf_counter() - started
    rows: list[dict[str, Any]] = []
    local: dict[int, tuple[float, Any]] = {}  # threads -> the local run's wall time and numbers
    try:
        with tempfile.TemporaryDirectory() as out:  # untimed: this process's one-time costs (imports, kernels)
            mkeval.run(models=models, datasets="markov", seeds=[SEEDS[0]], protocol=protocol, output_dir=out,
                       device=device, threads=threads)
        for name, options, job_cpus in ways:
            times, numbers = [], None
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as out:
                    began = time.perf_counter()
                    mkeval.run(models=models, datasets="markov", seeds=list(SEEDS), protocol=protocol,
                               output_dir=out, device=device, **options)
                    times.append(time.perf_counter() - began)
                    numbers = _numbers(Path(out))
            wall = statistics.median(times)
            base = local.setdefault(options["threads"], (wall, numbers))
            rows.append({"executor": name, "jobs": jobs, "ray_cpus": job_cpus, "threads": options["threads"],
                         "wall_s": wall, "vs_local": wall / base[0], "same_numbers": numbers == base[1]})
    finally:
        ray.shutdown()
    overhead = {"threads": rows[1]["vs_local"] - 1, "one_thread": rows[3]["vs_local"] - 1}
    notes = [f"{jobs} cells ({', '.join(models)} x seeds {', '.join(map(str, SEEDS))}), seq_len {seq_len}, "
             f"batch {batch}, 40 steps each, device {device}; median of {repeats} run(s) each",
             "vs_local and same_numbers compare each row with the local run at the same --threads (the thread "
             "count may change the last bits of a result, so runs are compared at equal counts)",
             f"Ray executor overhead, one job at a time: {100 * overhead['threads']:+.1f}% with {threads} thread(s) "
             f"per job, {100 * overhead['one_thread']:+.1f}% with 1 thread per job (target: under 10%)",
             f"parallel Ray, 1 thread per job: {rows[4]['wall_s'] / rows[0]['wall_s']:.2f}x the local default's "
             "wall time",
             f"starting the local Ray instance (not in the times above): {startup:.1f} s"]
    return BenchmarkResult(columns=COLUMNS, rows=rows, notes=notes,
                           meta={"ray": ray.__version__, "threads": describe(threads), "startup_s": startup,
                                 "overhead": overhead})
