"""``mkeval bench scaling``: training-step cost against sequence length, for any registered models.

At every length each model trains on the same number of tokens per batch (batch size =
tokens per batch / length), so a model whose cost is linear in length keeps a flat time per
token. Per model and length: step time (forward, next-token loss, backward, AdamW update;
median of ``repeats`` timed steps after one untimed warm-up), tokens per second, time per
token, peak memory, and FLOPs per token (``FlopCounterMode``, with the plugins' formulas).
Lengths are taken one at a time, and at each the models' timed steps take turns
(``time_models``), so that ratios between models are not skewed by a machine whose speed drifts
during the run; peak memory and FLOPs are measured with each model alone in memory.
A length a model declares it cannot take (``ModelSpec.max_seq_len``), or that runs out of
memory, is reported as such and the sweep goes on. ``plot`` draws the figure (PNG).

Steps are timed by the libraries made for it: ``torch.utils.benchmark`` on CPU (``repeats``
single-step measurements merged; median and interquartile range) and
``triton.testing.do_bench`` on CUDA. On CPU the run uses ``mkeval.threads.choose_threads()``
intra-op threads, recorded in ``meta``.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Measurement, Timer

import mkeval
from mkeval import BenchmarkResult, BenchmarkSpec, UsageError

DEFAULT_SEQ_LENS = (256, 1024, 4096, 16384)
DEFAULT_MODELS = ("bk", "mamba", "transformer")
DEFAULT_REPEATS = 5
VOCAB_SIZE = 256
COLUMNS = ["model", "seq_len", "batch_size", "status", "backend", "step_s", "step_iqr_s", "tokens_per_s",
           "us_per_token", "per_token_vs_shortest", "peak_memory_mb", "flops_per_token"]


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    if isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in ("out of memory", "can't allocate memory")):
        return "out of memory"
    return f"failed: {type(exc).__name__}: {str(exc)[:200]}"


def _fail(rows: list[dict[str, Any]], name: str, exc: BaseException) -> None:
    next(r for r in rows if r["model"] == name)["status"] = _failure(exc)


def _build(name: str, seq_len: int, batch: int, device: torch.device):
    from mkeval.engine.models import build_model

    model = build_model(name, VOCAB_SIZE, seq_len, size="tiny", seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, VOCAB_SIZE, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    return model, opt, ids


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(name: str, seq_len: int, batch: int, device: torch.device) -> dict[str, Any]:
    """A model's row at one length without its time: status, backend, FLOPs and peak memory per
    token, with the model alone in memory (built, measured and freed)."""
    from mkeval.engine.measure import PeakMemory, count_step_flops

    registry = mkeval.get_registry()
    spec = registry.get("model", name, option="--models")
    row: dict[str, Any] = {"model": name, "seq_len": seq_len, "batch_size": batch}
    if spec.max_seq_len is not None and seq_len > spec.max_seq_len:
        return {**row, "status": f"unsupported: {name} declares at most {spec.max_seq_len} tokens"}
    try:
        model, opt, ids = _build(name, seq_len, batch, device)
        flops = count_step_flops(model, ids[:, :-1], lambda logits: F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)), registry.flop_formulas)
        _step(model, opt, ids)  # warm-up: allocations, kernel selection
        with PeakMemory(device) as memory:  # one plain step: do_bench's own 256 MiB cache-flush buffer is not counted
            _step(model, opt, ids)
        backend = getattr(model, "backend", None)
    except Exception as exc:  # one model failing at one length must not stop the sweep
        return {**row, "status": _failure(exc)}
    finally:
        model = opt = ids = None
        _release(device)
    return {**row, "status": "ok", "backend": backend, "peak_memory_mb": memory.peak_mb,
            "flops_per_token": (flops.forward + flops.backward) / (batch * seq_len), "memory_method": memory.method}


def time_models(rows: list[dict[str, Any]], repeats: int, device: torch.device) -> None:
    """Time the steps of the models of ``rows`` (one length, status ok) and add the figures to
    their rows. On CPU the timed steps take turns, round after round (``torch.utils.benchmark``,
    one step per measurement, the order rotated each round), so that a machine whose speed
    drifts slows every model alike and the ratios between them hold; on CUDA each model gets
    ``triton.testing.do_bench`` in turn."""
    steps, times = {}, {}
    model = opt = ids = None
    for row in rows:
        try:
            model, opt, ids = _build(row["model"], row["seq_len"], row["batch_size"], device)
            _step(model, opt, ids)  # warm-up
            steps[row["model"]] = (lambda model=model, opt=opt, ids=ids: _step(model, opt, ids))
            times[row["model"]] = []
        except Exception as exc:
            row["status"] = _failure(exc)
    try:
        if device.type == "cuda":
            from triton.testing import do_bench

            for name, step in list(steps.items()):
                try:
                    median, low, high = do_bench(step, warmup=0, rep=100 * repeats, quantiles=[0.5, 0.25, 0.75])
                    times[name] = (median / 1e3, (high - low) / 1e3, None)  # do_bench does not say how many it timed
                except Exception as exc:
                    _fail(rows, name, exc)
                    del steps[name]
        else:
            names = list(steps)
            for turn in range(repeats if names else 0):
                for name in names[turn % len(names):] + names[: turn % len(names)]:
                    if name in steps:
                        try:
                            times[name].append(Timer("step()", globals={"step": steps[name]},
                                                     num_threads=torch.get_num_threads()).timeit(1))
                        except Exception as exc:
                            _fail(rows, name, exc)
                            del steps[name]
            for name in steps:
                m = Measurement.merge(times[name])[0]
                times[name] = (m.median, m.iqr, len(m.times))
    finally:
        steps = model = opt = ids = None
        _release(device)
    for row in rows:
        if row["status"] != "ok":
            continue
        step, spread, timed = times[row["model"]]
        tokens = row["batch_size"] * row["seq_len"]
        row.update(step_s=step, step_iqr_s=spread, steps_timed=timed, tokens_per_s=tokens / step,
                   us_per_token=1e6 * step / tokens)


def run(seq_lens: Sequence[int] | None = None, batch_size: int | None = None, models: Sequence[str] | None = None,
        repeats: int | None = None, device: str | None = None) -> BenchmarkResult:
    lens = sorted(seq_lens or DEFAULT_SEQ_LENS)
    names = list(models or DEFAULT_MODELS)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # batch_size: sequences per batch at the longest length; tokens per batch are fixed from it
    tokens = (batch_size or 1) * lens[-1]
    bad = [n for n in lens if tokens % n]
    if bad:
        raise UsageError(f"bench scaling: tokens per batch ({tokens}) must be a multiple of every --seq-len; {bad} "
                         "are not (use lengths that divide the longest)")
    from mkeval.threads import choose_threads, describe

    rows = []
    threads = choose_threads() if dev.type == "cpu" else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in lens:  # length by length, every model's steps timed in turns (time_models)
            at_n = [measure(name, n, tokens // n, dev) for name in names]
            time_models([r for r in at_n if r["status"] == "ok"], repeats or DEFAULT_REPEATS, dev)
            rows.extend(at_n)
        for name in names:
            mine = [r for r in rows if r["model"] == name]
            first = next((r for r in mine if r["status"] == "ok"), None)
            for r in mine:
                if r["status"] == "ok" and first is not None:
                    r["per_token_vs_shortest"] = r["us_per_token"] / first["us_per_token"]
    finally:
        torch.set_num_threads(previous_threads)
    from mkeval.engine.measure import describe_device

    notes = [f"{tokens} tokens per batch at every length (batch_size = {tokens} / seq_len); models at size tiny, "
             f"vocabulary {VOCAB_SIZE}; step = forward + loss + backward + AdamW, median (and IQR) "
             + (f"of the steps triton.testing.do_bench fits in {100 * (repeats or DEFAULT_REPEATS)} ms after its own "
                "warm-up (it does not say how many: steps_timed is null)." if dev.type == "cuda" else
                f"of {repeats or DEFAULT_REPEATS} after one warm-up (torch.utils.benchmark; {threads} threads); at "
                "each length the models' timed steps took turns, so their ratios are not skewed by drift."),
             "per_token_vs_shortest: time per token at this length over the model's time per token at the "
             "shortest length it ran (1.0 = linear cost in length)."]
    if dev.type == "cpu":
        notes.append("CPU peak memory is the process's resident set sampled during one step: it includes "
                     "the Python and torch runtime and whatever the allocator kept from earlier measurements.")
    return BenchmarkResult(rows=rows, columns=COLUMNS, notes=notes,
                           meta={"device": describe_device(dev), "tokens_per_batch": tokens, "seq_lens": lens,
                                 "models": names, "torch": torch.__version__, "threads": threads,
                                 "cpus": describe(threads) if dev.type == "cpu" else None},
                           plot=plot)


def plot(result: BenchmarkResult, path: Path) -> None:
    """Time per token and peak memory against length, one line per model (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in result.meta["models"]:
        ok = [r for r in result.rows if r["model"] == name and r["status"] == "ok"]
        if not ok:
            continue
        lens = [r["seq_len"] for r in ok]
        axes[0].plot(lens, [r["us_per_token"] for r in ok], marker="o", label=name)
        axes[1].plot(lens, [r["peak_memory_mb"] for r in ok], marker="o", label=name)
        for r in result.rows:
            if r["model"] == name and r["status"] != "ok":
                axes[0].annotate(f"{name}: {r['status'].split(':')[0]}", (r["seq_len"], ok[-1]["us_per_token"]),
                                 fontsize=7)
    device = result.meta["device"].get("name", result.meta["device"]["type"])
    for ax, label in zip(axes, ("µs per token (training step)", "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"mkeval bench scaling: {result.meta['tokens_per_batch']} tokens per batch, {device} (measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@mkeval.hookimpl
def register_benchmarks(register):
    register(BenchmarkSpec(name="scaling", run=run,
                           description="training-step time, tokens/s, memory and FLOPs per token vs sequence "
                                       "length, fixed tokens per batch, for any models"))
    from . import executors

    register(BenchmarkSpec(name="executors", run=executors.run,
                           description="the Ray executor's wall time against the local executor's on one matrix "
                                       "of small cells (needs mkeval[ray])"))
