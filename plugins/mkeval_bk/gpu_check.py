"""GPU check of the BK resolvent-diagonal op: Triton against the float64 reference, and timings.

    PYTHONPATH=plugins:. python plugins/mkeval_bk/gpu_check.py            # on a CUDA machine
    PYTHONPATH=plugins:. python plugins/mkeval_bk/gpu_check.py --cpu-interpret   # tiny, on CPU

Needs torch and triton only (not mkeval or its dependencies: ``mkeval_bk``'s ``__init__`` is
bypassed). Checks, in float32 unless noted, with per-system shifts down to Im z = 0.05:

- Triton forward, causal, N = 256, 2048, 8192, 65536: elementwise relative error <= 1e-5
  against the chunked path run in float64 (itself checked against dense and banded
  inverses by the test suite), and against the per-position float64 loop for N <= 2048;
- Triton backward (gradients of diag, off, Re z, Im z) at the same N: error relative to
  the largest reference gradient <= 1e-4, against float64 references as above;
- float64 Triton against float64 reference (1e-10), the non-causal op, and bit-identical
  causality (changing position t+1 leaves outputs 0..t unchanged).

Then it times Triton, the chunked PyTorch path on the GPU ("cpu" backend) and the loops
(forward and forward+backward, batch 8 x 16 channels; ``triton.testing.do_bench``), with
GB/s against the device's memory bandwidth, and times the Triton kernels in both memory
layouts (``triton_kernels.LAYOUTS``: positions-major, the default, against the old
systems-major one) at N = 2048 and 65536 with 128 systems, with the issue's targets: at
least 30% of the memory bandwidth at N = 65536 and forward+backward at least 5x faster
than the old layout at N = 2048. Prints one JSON object and writes it to
``$OUT/bk_gpu.json`` when OUT is set; exits 1 if any check fails (a missed speed target is
reported, not failed).
"""

from __future__ import annotations

import os
import sys

if "--cpu-interpret" in sys.argv:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

# Import mkeval_bk's op and benchmark modules without running its __init__ (which needs mkeval).
if "mkeval_bk" not in sys.modules:
    _pkg = types.ModuleType("mkeval_bk")
    _pkg.__path__ = [str(Path(__file__).resolve().parent)]
    sys.modules["mkeval_bk"] = _pkg

from mkeval_bk import bench  # noqa: E402
from mkeval_bk.ops import backend_name, forced_backend, reference, resolvent_diagonal_real  # noqa: E402

TIME_BUDGET_S = 150  # timings are skipped (not failed) past this, to stay well under 3 minutes


def _inputs(batch, channels, n, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    diag = -2.0 + 1.5 * torch.randn(batch, channels, n, generator=gen, dtype=torch.float64)
    off = 1.0 + 0.3 * torch.randn(batch, channels, n - 1, generator=gen, dtype=torch.float64)
    z_re = torch.linspace(-3.0, 0.5, channels, dtype=torch.float64)
    z_im = torch.linspace(0.05, 1.0, channels, dtype=torch.float64)
    weights = torch.randn(batch, channels, n, 2, generator=gen, dtype=torch.float64)
    return [t.to(dtype).to(device) for t in (diag, off, z_re, z_im, weights)]


def _run(backend, diag, off, z_re, z_im, weights, causal=True):
    """Output and the four gradients of sum(weights * output), on ``backend`` (or 'loop')."""
    leaves = [t.detach().clone().requires_grad_() for t in (diag, off, z_re, z_im)]
    if backend == "loop":
        out = torch.view_as_real(
            reference.resolvent_diagonal_loop(leaves[0], leaves[1], torch.complex(leaves[2], leaves[3]), causal)
        )
        (out * weights).sum().backward()
    else:
        with forced_backend(backend):
            out = resolvent_diagonal_real(*leaves, causal=causal)
            (out * weights).sum().backward()
    return out.detach(), [t.grad for t in leaves]


def _elementwise_rel(a, b):
    a, b = torch.view_as_complex(a.double().contiguous()), torch.view_as_complex(b.double().contiguous())
    return ((a - b).abs() / b.abs()).max().item()


def _normwise_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


class Report:
    def __init__(self):
        self.checks, self.failures = [], []

    def check(self, name, fn):
        start = time.perf_counter()
        try:
            detail = fn()
            passed = all(v["ok"] for v in detail.values() if isinstance(v, dict) and "ok" in v)
        except Exception as exc:  # a crash is a failed check
            detail, passed = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, False
        entry = {"name": name, "passed": passed, "seconds": round(time.perf_counter() - start, 2), **detail}
        self.checks.append(entry)
        if not passed:
            self.failures.append(name)
        print(f"[{'ok' if passed else 'FAIL'}] {name}", file=sys.stderr, flush=True)


def _metric(value, tol):
    return {"value": value, "tol": tol, "ok": bool(value <= tol)}


def accuracy_checks(report, device, seq_lens, loop_max_n):
    for n in seq_lens:
        def fwd_bwd(n=n):
            f32 = _inputs(2, 4, n, torch.float32, device, seed=n)
            exact_inputs = [t.double() for t in f32]  # judged on the float32 inputs as rounded
            out, grads = _run("triton", *f32)
            ref_out, ref_grads = _run("cpu", *exact_inputs)
            detail = {
                "N": n,
                "forward_rel_vs_float64_chunked": _metric(_elementwise_rel(out, ref_out), 1e-5),
                "finite": {"ok": bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)},
            }
            for name, g, r in zip(("diag", "off", "z_re", "z_im"), grads, ref_grads):
                detail[f"grad_{name}_rel"] = _metric(_normwise_rel(g, r), 1e-4)
            if n <= loop_max_n:
                loop_out, loop_grads = _run("loop", *exact_inputs)
                detail["forward_rel_vs_float64_loop"] = _metric(_elementwise_rel(out, loop_out), 1e-5)
                detail["grad_diag_rel_vs_loop_autograd"] = _metric(_normwise_rel(grads[0], loop_grads[0]), 1e-4)
                detail["reference_chunked_vs_loop"] = _metric(_elementwise_rel(ref_out, loop_out), 1e-12)
            return detail

        report.check(f"triton float32 causal N={n}", fwd_bwd)

    n_small = seq_lens[min(1, len(seq_lens) - 1)]

    def float64():
        f64 = _inputs(2, 4, n_small, torch.float64, device, seed=1)
        out, grads = _run("triton", *f64)
        ref_out, ref_grads = _run("cpu", *f64)
        detail = {"N": n_small, "forward_rel": _metric(_elementwise_rel(out, ref_out), 1e-10)}
        for name, g, r in zip(("diag", "off", "z_re", "z_im"), grads, ref_grads):
            detail[f"grad_{name}_rel"] = _metric(_normwise_rel(g, r), 1e-10)
        return detail

    report.check(f"triton float64 causal N={n_small}", float64)

    def non_causal():
        f32 = _inputs(2, 4, n_small, torch.float32, device, seed=2)
        out, grads = _run("triton", *f32, causal=False)
        ref_out, ref_grads = _run("cpu", *[t.double() for t in f32], causal=False)
        detail = {"N": n_small, "forward_rel": _metric(_elementwise_rel(out, ref_out), 1e-5)}
        for name, g, r in zip(("diag", "off", "z_re", "z_im"), grads, ref_grads):
            detail[f"grad_{name}_rel"] = _metric(_normwise_rel(g, r), 1e-4)
        return detail

    report.check(f"triton float32 non-causal N={n_small}", non_causal)

    def causality():
        diag, off, z_re, z_im, _ = _inputs(2, 4, n_small, torch.float32, device, seed=3)
        with forced_backend("triton"):
            base = resolvent_diagonal_real(diag, off, z_re, z_im)
            bad = []
            for t in (0, n_small // 3, n_small - 2):
                d2, o2 = diag.clone(), off.clone()
                d2[..., t + 1] += 1.0
                o2[..., t] += 0.5
                out = resolvent_diagonal_real(d2, o2, z_re, z_im)
                if not torch.equal(out[..., : t + 1, :], base[..., : t + 1, :]) or torch.equal(out[..., t + 1, :], base[..., t + 1, :]):
                    bad.append(t)
        return {"N": n_small, "bit_identical_prefix": {"ok": not bad, "failed_at": bad}}

    report.check(f"triton causality N={n_small}", causality)

    def layouts_agree():
        from mkeval_bk.ops import triton_kernels

        f32 = _inputs(2, 4, n_small, torch.float32, device, seed=4)
        results = []
        for name in triton_kernels.LAYOUTS:
            os.environ[triton_kernels.LAYOUT_ENV] = name
            results.append(_run("triton", *f32))
        os.environ.pop(triton_kernels.LAYOUT_ENV)
        (out_a, grads_a), (out_b, grads_b) = results
        detail = {"N": n_small, "forward_rel": _metric(_elementwise_rel(out_a, out_b), 1e-6)}
        for name, g, r in zip(("diag", "off", "z_re", "z_im"), grads_a, grads_b):
            detail[f"grad_{name}_rel"] = _metric(_normwise_rel(g, r), 1e-6)
        return detail

    report.check(f"triton layouts agree N={n_small}", layouts_agree)


def layout_timings(device, seq_lens, batch, channels, repeats):
    """Triton in each memory layout (rows tagged ``layout``) and the issue's targets."""
    from mkeval_bk.ops import triton_kernels

    rows = []
    for name in triton_kernels.LAYOUTS:
        os.environ[triton_kernels.LAYOUT_ENV] = name
        for n in seq_lens:
            measured, _ = bench.measure((n,), batch, channels, ("triton",), repeats, device)
            rows += [{**r, "layout": name} for r in measured]
    os.environ.pop(triton_kernels.LAYOUT_ENV)
    by = {(r["layout"], r["N"]): r for r in rows}
    short, long = seq_lens[0], seq_lens[-1]
    new_long, new_short, old_short = by.get(("positions", long)), by.get(("positions", short)), by.get(("systems", short))
    targets = {
        f"pct_of_peak_bandwidth_fwd_bwd_at_N={long}": {
            "value": new_long and new_long.get("fwd_bwd_pct_peak"), "target": 30.0},
        f"fwd_bwd_speedup_over_systems_layout_at_N={short}": {
            "value": new_short and old_short and old_short["fwd_bwd_ms"] / new_short["fwd_bwd_ms"], "target": 5.0},
    }
    for t in targets.values():
        t["met"] = t["value"] is not None and t["value"] >= t["target"]
    return rows, targets


def main() -> int:
    start = time.perf_counter()
    interpret = "--cpu-interpret" in sys.argv
    if interpret:
        device = torch.device("cpu")
        seq_lens, time_lens, batch, channels, repeats, loop_max_n = (40, 100), (64, 128), 2, 2, 1, 128
        layout_lens = (64, 128)
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --cpu-interpret to exercise the code on CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        seq_lens, time_lens, batch, channels, repeats, loop_max_n = (256, 2048, 8192, 65536), (256, 2048, 8192, 65536), 8, 16, 5, 2048
        layout_lens = (2048, 65536)

    import triton

    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu (TRITON_INTERPRET=1, {platform.processor()})",
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "default_backend": backend_name(device),
    }
    report = Report()
    accuracy_checks(report, device, seq_lens, loop_max_n)

    timings, notes = [], []
    for n in time_lens:
        if time.perf_counter() - start > TIME_BUDGET_S:
            notes.append(f"timings from N={n} on skipped: past the {TIME_BUDGET_S}s budget")
            break
        backends = ("loop", "reference", "cpu", "triton")
        rows, skipped = bench.measure((n,), batch, channels, backends, repeats, device, loop_max_n=loop_max_n)
        timings += rows
        notes += skipped
    notes = bench.growth_notes(timings) + notes
    layout_rows, targets = [], {}
    if time.perf_counter() - start <= TIME_BUDGET_S:
        layout_rows, targets = layout_timings(device, layout_lens, batch, channels, repeats)
    else:
        notes.append(f"layout timings skipped: past the {TIME_BUDGET_S}s budget")
    peak, source = bench.peak_bandwidth(device)
    result.update(
        ok=not report.failures,
        failures=report.failures,
        checks=report.checks,
        timings=timings,
        layout_timings=layout_rows,
        targets=targets,
        timing_setup={"batch": batch, "channels": channels, "dtype": "float32", "causal": True, "repeats": repeats,
                      "timer": "triton.testing.do_bench" if device.type == "cuda" else "torch.utils.benchmark"},
        bandwidth={"peak_gbps": peak, "peak_source": source, "copy_gbps": bench.copy_bandwidth(device)},
        notes=notes,
        elapsed_s=round(time.perf_counter() - start, 1),
    )
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["OUT"]) / "bk_gpu.json").write_text(text)
    if report.failures:
        print(f"gpu_check: FAILED {len(report.failures)} check(s): {', '.join(report.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
