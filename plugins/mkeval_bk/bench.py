"""``mkeval bench bk-core``: the resolvent-diagonal op per backend against a per-position loop.

For each sequence length N and each backend, the causal op runs on ``batch x channels``
independent float32 systems; forward (no grad) and forward+backward are timed with the
libraries made for it: ``torch.utils.benchmark.Timer.blocked_autorange`` on CPU (its block
size estimate is the warm-up; at each N every backend's forward and forward+backward take
turns, ``repeats`` rounds of 0.1 s of timed blocks each, merged, so that a machine whose speed
drifts during the run cannot skew the speedups; ``calls`` says how many ran) and
``triton.testing.do_bench`` on CUDA (cache flushed between calls). Each time is the median
with its interquartile range. ``loop`` is the straightforward per-position PyTorch loop
(``reference.resolvent_diagonal_loop``, differentiated by autograd); speedups are against
it, measured in the same run, and ``fwd_bwd_vs_loop_fwd`` is the loop's forward time over
the backend's forward+backward time. On CUDA, GB/s counts the op's minimal traffic (each
input read once, each output written once: 16 bytes per position forwards, 44
forward+backward) and is compared with the device's memory bandwidth.

On CPU the run uses ``mkeval.threads.choose_threads()`` intra-op threads (recorded in
``meta``), and two more measurements: the first call in a new process whose on-disk kernel
cache is warm (the compiled backend's numba cache, which this run has just filled), and the
cpu and compiled backends again while another process keeps one CPU busy (rows with
``neighbour = busy``), to show whether the op stalls then.

Nothing here imports mkeval at module level, so ``gpu_check.py`` can reuse the helpers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .ops import BACKENDS, forced_backend, resolvent_diagonal_real
from .ops import reference
from .ops.op import _numba_installed

DEFAULT_SEQ_LENS = (256, 1024, 2048, 4096, 16384, 65536)
DEFAULT_BATCH = 8
DEFAULT_CHANNELS = 1
DEFAULT_REPEATS = 5
SECONDS_PER_REPEAT = 0.1  # CPU: timed blocks per measurement; CUDA: 40 ms of do_bench per repeat
LOOP_MAX_N = 16384  # the loops take seconds per call beyond this
NEIGHBOUR_SEQ_LENS = (2048, 16384)  # the busy-neighbour rows, where these lengths are measured
BYTES_FWD = 4 + 4 + 8  # diag, off in; complex64 out (per position, float32)
BYTES_BWD = 8 + 8 + 4 + 4 + 4  # grad and out in, off in, grad diag and grad off out
Z = complex(-1.0, 0.5)
PLUGINS_DIR = Path(__file__).resolve().parent.parent


def make_inputs(batch: int, channels: int, n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Laplacian plus a random potential and random couplings, float32, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    diag = -2.0 + torch.randn(batch, channels, n, generator=gen)
    off = 1.0 + 0.1 * torch.randn(batch, channels, n - 1, generator=gen)
    grad = torch.randn(batch, channels, n, 2, generator=gen)
    return {k: v.to(device) for k, v in dict(diag=diag, off=off, grad=grad).items()}


@dataclass(frozen=True)
class Timing:
    """A median time and its spread (interquartile range), in milliseconds."""

    median_ms: float
    iqr_ms: float
    calls: int | None  # None on CUDA: do_bench does not say


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> Timing:
    """Time ``fn``: ``triton.testing.do_bench`` on CUDA, ``torch.utils.benchmark`` on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        median, low, high = do_bench(fn, warmup=10 * repeats, rep=40 * repeats, quantiles=[0.5, 0.25, 0.75])
        return Timing(median, high - low, None)  # do_bench does not say how many calls it timed
    from torch.utils.benchmark import Measurement, Timer

    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=SECONDS_PER_REPEAT * repeats)
    calls = len(m.raw_times) * m.number_per_run
    if len(m.times) < repeats:  # calls longer than the run time give one sample: time single calls up to repeats
        extra = [timer.timeit(1) for _ in range(repeats - len(m.times))]
        m, calls = Measurement.merge([m, *extra])[0], calls + len(extra)
    return Timing(1e3 * m.median, 1e3 * m.iqr, calls)


def time_in_turns(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """CPU: time every callable of ``calls`` in turns, ``repeats`` rounds (the order rotated each
    round), each turn one ``Timer.blocked_autorange`` of ``SECONDS_PER_REPEAT`` s, merged per
    callable: a machine whose speed drifts during the run then slows every callable alike, and
    the ratios between them (the speedups) hold. Each callable gets at least ``repeats`` samples."""
    from torch.utils.benchmark import Measurement, Timer

    names = list(calls)
    samples: dict[str, list] = {name: [] for name in names}
    for turn in range(repeats if names else 0):
        for name in names[turn % len(names):] + names[: turn % len(names)]:
            timer = Timer("fn()", globals={"fn": calls[name]}, num_threads=torch.get_num_threads())
            samples[name].append(timer.blocked_autorange(min_run_time=SECONDS_PER_REPEAT))
    timings = {}
    for name, ms in samples.items():
        m = Measurement.merge(ms)[0]
        timings[name] = Timing(1e3 * m.median, 1e3 * m.iqr, sum(len(x.raw_times) * x.number_per_run for x in ms))
    return timings


def op_callables(backend: str, inputs: dict[str, torch.Tensor]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) closures for ``backend`` (one of BACKENDS, or ``loop``)."""
    diag = inputs["diag"].clone().requires_grad_()
    off = inputs["off"].clone().requires_grad_()
    grad = inputs["grad"]
    zr = torch.tensor(Z.real, device=diag.device)
    zi = torch.tensor(Z.imag, device=diag.device)

    if backend == "loop":

        def call(d, o):
            return torch.view_as_real(reference.resolvent_diagonal_loop(d, o, Z))

    else:

        def call(d, o):
            with forced_backend(backend):
                return resolvent_diagonal_real(d, o, zr, zi)

    def forward():
        with torch.no_grad():
            return call(diag, off)

    def forward_backward():
        diag.grad = off.grad = None
        with forced_backend(None if backend == "loop" else backend):
            call(diag, off).backward(grad)

    return forward, forward_backward


def peak_bandwidth(device: torch.device) -> tuple[float | None, str]:
    """The device's memory bandwidth in GB/s and where the number comes from."""
    if device.type != "cuda":
        return None, "not measured on CPU"
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "2 x memory clock x bus width (device properties)"
    known = {"H100 80GB HBM3": 3352.0, "H100 PCIe": 2039.0, "H200": 4800.0, "A100-SXM4-80GB": 2039.0}
    for name, gbps in known.items():
        if name in props.name:
            return gbps, f"datasheet value for {name}"
    return None, f"unknown for {props.name}"


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float | None:
    """Measured device-to-device copy bandwidth in GB/s (reads + writes), CUDA only."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_call(lambda: dst.copy_(src), 5, device).median_ms
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure(
    seq_lens: tuple[int, ...],
    batch: int,
    channels: int,
    backends: tuple[str, ...],
    repeats: int,
    device: torch.device,
    loop_max_n: int = LOOP_MAX_N,
    neighbour: str = "none",
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per backend and N) and notes on what was skipped."""
    peak, _ = peak_bandwidth(device)
    rows, notes = [], []
    for n in seq_lens:
        inputs = make_inputs(batch, channels, n, device)
        base: dict[str, float] = {}
        calls: dict[tuple[str, str], Callable[[], Any]] = {}
        for backend in backends:
            if backend in ("loop", "reference") and n > loop_max_n:
                notes.append(f"{backend} skipped at N={n} (per-position loops are too slow beyond N={loop_max_n})")
                continue
            calls[backend, "fwd"], calls[backend, "fwd_bwd"] = op_callables(backend, inputs)
        if device.type == "cuda":
            timed = {key: time_call(fn, repeats, device) for key, fn in calls.items()}
        else:  # in turns, so that the speedups are ratios of times taken side by side
            timed = time_in_turns(calls, repeats)
        for backend in dict.fromkeys(b for b, _ in calls):
            f, fb = timed[backend, "fwd"], timed[backend, "fwd_bwd"]
            row: dict[str, Any] = dict(
                backend=backend, N=n, batch=batch, channels=channels, threads=torch.get_num_threads(),
                neighbour=neighbour, fwd_ms=f.median_ms, fwd_iqr_ms=f.iqr_ms, fwd_bwd_ms=fb.median_ms,
                fwd_bwd_iqr_ms=fb.iqr_ms, calls=None if f.calls is None else f.calls + fb.calls,
            )
            tokens = batch * n
            row["fwd_tokens_per_s"] = tokens / (row["fwd_ms"] * 1e-3)
            row["fwd_bwd_tokens_per_s"] = tokens / (row["fwd_bwd_ms"] * 1e-3)
            if backend == "loop":
                base = dict(fwd=row["fwd_ms"], fwd_bwd=row["fwd_bwd_ms"])
            row["speedup_fwd"] = base["fwd"] / row["fwd_ms"] if base else None
            row["speedup_fwd_bwd"] = base["fwd_bwd"] / row["fwd_bwd_ms"] if base else None
            row["fwd_bwd_vs_loop_fwd"] = base["fwd"] / row["fwd_bwd_ms"] if base else None
            if device.type == "cuda":
                positions = batch * channels * n
                row["fwd_gbps"] = positions * BYTES_FWD / (row["fwd_ms"] * 1e-3) / 1e9
                row["fwd_bwd_gbps"] = positions * (BYTES_FWD + BYTES_BWD) / (row["fwd_bwd_ms"] * 1e-3) / 1e9
                row["fwd_bwd_pct_peak"] = 100 * row["fwd_bwd_gbps"] / peak if peak else None
            rows.append(row)
    return rows, notes


def growth_notes(rows: list[dict[str, Any]], short: int = 2048, long: int = 16384) -> list[str]:
    """``t(long) / t(short)`` per backend: linear time in N gives long / short."""
    notes = []
    by_key = {(r["backend"], r["N"]): r for r in rows if r.get("neighbour", "none") == "none"}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        a, b = by_key.get((backend, short)), by_key.get((backend, long))
        if a and b:
            notes.append(
                f"{backend}: t(N={long}) / t(N={short}) = {b['fwd_ms'] / a['fwd_ms']:.1f} forward, "
                f"{b['fwd_bwd_ms'] / a['fwd_bwd_ms']:.1f} forward+backward (linear growth: {long / short:.0f})"
            )
    return notes


def default_backends(device: torch.device) -> tuple[str, ...]:
    backends = ["loop", "reference", "cpu"]
    if device.type == "cpu" and _numba_installed():
        backends.append("compiled")
    if device.type == "cuda":
        try:
            from .ops import triton_kernels  # noqa: F401
        except ImportError:
            pass
        else:
            backends.append("triton")
    return tuple(backends)


# --------------------------------------------------------------------------- CPU extras
_FIRST_USE = """
import time, torch
from mkeval_bk.ops import forced_backend, resolvent_diagonal_real
diag = torch.randn(2, 64).requires_grad_()
off = torch.randn(2, 63)
for backend in ("cpu", {backend!r}):
    start = time.perf_counter()
    with forced_backend(backend):
        resolvent_diagonal_real(diag, off, -1.0, 0.5).sum().backward()
    print(time.perf_counter() - start)
"""


def first_use_seconds(backend: str) -> tuple[float, float, float]:
    """In a new Python process: (the first forward+backward of the op, on the cpu backend: torch's
    own one-time costs, which any backend pays; then the first on ``backend``: importing it and
    loading or compiling its kernels; the whole process) in seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS_DIR), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _FIRST_USE.format(backend=backend)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    torch_first, backend_first = (float(x) for x in proc.stdout.split()[-2:])
    return torch_first, backend_first, time.perf_counter() - start


@contextlib.contextmanager
def busy_neighbour() -> Iterator[None]:
    """Another process that keeps one CPU busy (a Python spin loop) for the block's duration."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach its loop
        yield
    finally:
        spinner.kill()
        spinner.wait()


def stall_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Per backend and N: forward+backward time with the busy neighbour over the time without."""
    quiet = {(r["backend"], r["N"]): r for r in rows if r["neighbour"] == "none"}
    notes = []
    for r in rows:
        q = quiet.get((r["backend"], r["N"]))
        if r["neighbour"] == "busy" and q:
            notes.append(
                f"busy neighbour, {r['backend']} at N={r['N']}, {r['threads']} threads: forward+backward "
                f"{r['fwd_bwd_ms']:.3g} ms against {q['fwd_bwd_ms']:.3g} ms without ({r['fwd_bwd_ms'] / q['fwd_bwd_ms']:.2f}x)"
            )
    return notes


def run(
    seq_lens: list[int] | None = None,
    batch_size: int | None = None,
    models: list[str] | None = None,
    repeats: int | None = None,
    device: str | torch.device | None = None,
    channels: int | None = None,
    neighbour: bool | None = None,
    first_use: bool | None = None,
):
    """The ``bk-core`` benchmark; ``models`` picks backends (``loop`` plus any of BACKENDS).

    ``neighbour`` and ``first_use`` (CPU only; default on) add the busy-neighbour rows and the
    new-process first-call time."""
    from mkeval import BenchmarkResult, UsageError
    from mkeval.threads import choose_threads, describe

    dev = torch.device(device) if device is not None else torch.device("cpu")
    backends = tuple(models) if models else default_backends(dev)
    unknown = [b for b in backends if b not in ("loop", *BACKENDS)]
    if unknown:
        raise UsageError(f"bk-core: unknown backend(s) {', '.join(unknown)}; choose from loop, {', '.join(BACKENDS)}")
    if "triton" in backends or "compiled" in backends:
        from .ops import BackendUnavailable
        from .ops.op import _compiled_module, _triton_module

        try:
            for name, check in (("triton", _triton_module), ("compiled", _compiled_module)):
                if name in backends:
                    check(dev)
        except BackendUnavailable as exc:
            raise UsageError(f"bk-core: {exc}") from exc
    if "loop" not in backends:
        backends = ("loop", *backends)  # speedups need the baseline
    seq = tuple(seq_lens) if seq_lens else DEFAULT_SEQ_LENS
    if any(n < 2 for n in seq):
        raise UsageError(f"bk-core: sequence lengths must be >= 2, got {list(seq)}")
    batch = batch_size or DEFAULT_BATCH
    chans = channels or DEFAULT_CHANNELS
    reps = repeats or DEFAULT_REPEATS
    on_cpu = dev.type == "cpu"
    threads = choose_threads() if on_cpu else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows, notes = measure(seq, batch, chans, backends, reps, dev)
        growth = growth_notes(rows)
        first_use_s = None
        if on_cpu and "compiled" in backends and first_use is not False:
            torch_first, compiled_first, whole = first_use_seconds("compiled")
            first_use_s = torch_first + compiled_first
            notes.append(
                f"compiled: first use in a new process with the kernel cache warm: {first_use_s:.2f} s for the "
                f"first forward+backward ({torch_first:.2f} s of torch's first custom-op call, which every backend "
                f"pays, then {compiled_first:.2f} s importing numba and loading the cached kernels); the whole "
                f"process, Python and torch start-up included, took {whole:.1f} s"
            )
        busy = [b for b in ("cpu", "compiled") if b in backends]
        busy_lens = tuple(n for n in NEIGHBOUR_SEQ_LENS if n in seq)
        if on_cpu and busy and busy_lens and neighbour is not False:
            with busy_neighbour():
                busy_rows, _ = measure(busy_lens, batch, chans, tuple(busy), reps, dev, neighbour="busy")
            rows += busy_rows
            notes += stall_notes(rows)
    finally:
        torch.set_num_threads(previous_threads)
    peak, source = peak_bandwidth(dev)
    columns = [
        "backend", "N", "batch", "channels", "threads", "neighbour", "fwd_ms", "fwd_iqr_ms", "fwd_bwd_ms",
        "fwd_bwd_iqr_ms", "calls", "fwd_bwd_tokens_per_s", "speedup_fwd", "speedup_fwd_bwd", "fwd_bwd_vs_loop_fwd",
    ]  # fmt: skip
    if dev.type == "cuda":
        columns += ["fwd_gbps", "fwd_bwd_gbps", "fwd_bwd_pct_peak"]
        notes.append(f"peak memory bandwidth {peak} GB/s ({source}); copy bandwidth {copy_bandwidth(dev):.0f} GB/s")
    timer = "triton.testing.do_bench" if dev.type == "cuda" else "torch.utils.benchmark.Timer.blocked_autorange"
    notes.insert(0, f"times: median (and IQR) by {timer}; threads: {threads}")
    meta = dict(
        device=str(dev),
        torch=torch.__version__,
        threads=threads,
        cpus=describe(threads) if on_cpu else None,
        dtype="float32",
        causal=True,
        repeats=reps,
        timer=timer,
        z=str(Z),
        first_use_s=first_use_s,
    )
    return BenchmarkResult(rows=rows, columns=columns, notes=growth + notes, meta=meta)
