"""``mkeval bench bk-core``: the resolvent-diagonal op per backend against a per-position loop.

For each sequence length N and each backend, the causal op runs on ``batch x channels``
independent float32 systems; forward (no grad) and forward+backward are timed (median of
``repeats`` after one warm-up). ``loop`` is the straightforward per-position PyTorch loop
(``reference.resolvent_diagonal_loop``, differentiated by autograd); speedups are against it,
measured in the same run. On CUDA, GB/s counts the op's minimal traffic (each input read
once, each output written once: 16 bytes per position forwards, 44 forward+backward) and
is compared with the device's memory bandwidth.

Nothing here imports mkeval at module level, so ``gpu_check.py`` can reuse the helpers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .ops import BACKENDS, forced_backend, resolvent_diagonal_real
from .ops import reference

DEFAULT_SEQ_LENS = (256, 1024, 2048, 4096, 16384, 65536)
DEFAULT_BATCH = 8
DEFAULT_CHANNELS = 1
DEFAULT_REPEATS = 3
LOOP_MAX_N = 16384  # the loops take seconds per call beyond this
BYTES_FWD = 4 + 4 + 8  # diag, off in; complex64 out (per position, float32)
BYTES_BWD = 8 + 8 + 4 + 4 + 4  # grad and out in, off in, grad diag and grad off out
Z = complex(-1.0, 0.5)


def make_inputs(batch: int, channels: int, n: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Laplacian plus a random potential and random couplings, float32, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    diag = -2.0 + torch.randn(batch, channels, n, generator=gen)
    off = 1.0 + 0.1 * torch.randn(batch, channels, n - 1, generator=gen)
    grad = torch.randn(batch, channels, n, 2, generator=gen)
    return {k: v.to(device) for k, v in dict(diag=diag, off=off, grad=grad).items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in milliseconds, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


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
    ms = time_call(lambda: dst.copy_(src), 5, device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure(
    seq_lens: tuple[int, ...],
    batch: int,
    channels: int,
    backends: tuple[str, ...],
    repeats: int,
    device: torch.device,
    loop_max_n: int = LOOP_MAX_N,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per backend and N) and notes on what was skipped."""
    peak, _ = peak_bandwidth(device)
    rows, notes = [], []
    for n in seq_lens:
        inputs = make_inputs(batch, channels, n, device)
        base: dict[str, float] = {}
        for backend in backends:
            if backend in ("loop", "reference") and n > loop_max_n:
                notes.append(f"{backend} skipped at N={n} (per-position loops are too slow beyond N={loop_max_n})")
                continue
            fwd, fwd_bwd = op_callables(backend, inputs)
            row: dict[str, Any] = dict(backend=backend, N=n, batch=batch, channels=channels)
            row["fwd_ms"] = time_call(fwd, repeats, device)
            row["fwd_bwd_ms"] = time_call(fwd_bwd, repeats, device)
            tokens = batch * n
            row["fwd_tokens_per_s"] = tokens / (row["fwd_ms"] * 1e-3)
            row["fwd_bwd_tokens_per_s"] = tokens / (row["fwd_bwd_ms"] * 1e-3)
            if backend == "loop":
                base = dict(fwd=row["fwd_ms"], fwd_bwd=row["fwd_bwd_ms"])
            row["speedup_fwd"] = base["fwd"] / row["fwd_ms"] if base else None
            row["speedup_fwd_bwd"] = base["fwd_bwd"] / row["fwd_bwd_ms"] if base else None
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
    by_key = {(r["backend"], r["N"]): r for r in rows}
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
    if device.type == "cuda":
        try:
            from .ops import triton_kernels  # noqa: F401
        except ImportError:
            pass
        else:
            backends.append("triton")
    return tuple(backends)


def run(
    seq_lens: list[int] | None = None,
    batch_size: int | None = None,
    models: list[str] | None = None,
    repeats: int | None = None,
    device: str | torch.device | None = None,
    channels: int | None = None,
):
    """The ``bk-core`` benchmark; ``models`` picks backends (``loop`` plus any of BACKENDS)."""
    from mkeval import BenchmarkResult, UsageError

    dev = torch.device(device) if device is not None else torch.device("cpu")
    backends = tuple(models) if models else default_backends(dev)
    unknown = [b for b in backends if b not in ("loop", *BACKENDS)]
    if unknown:
        raise UsageError(f"bk-core: unknown backend(s) {', '.join(unknown)}; choose from loop, {', '.join(BACKENDS)}")
    if "triton" in backends:
        from .ops import BackendUnavailable
        from .ops.op import _triton_module

        try:
            _triton_module(dev)
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
    rows, notes = measure(seq, batch, chans, backends, reps, dev)
    notes = growth_notes(rows) + notes
    peak, source = peak_bandwidth(dev)
    columns = [
        "backend", "N", "batch", "channels", "fwd_ms", "fwd_bwd_ms",
        "fwd_tokens_per_s", "fwd_bwd_tokens_per_s", "speedup_fwd", "speedup_fwd_bwd",
    ]  # fmt: skip
    if dev.type == "cuda":
        columns += ["fwd_gbps", "fwd_bwd_gbps", "fwd_bwd_pct_peak"]
        notes.append(f"peak memory bandwidth {peak} GB/s ({source}); copy bandwidth {copy_bandwidth(dev):.0f} GB/s")
    meta = dict(
        device=str(dev),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        dtype="float32",
        causal=True,
        repeats=reps,
        z=str(Z),
    )
    return BenchmarkResult(rows=rows, columns=columns, notes=notes, meta=meta)
