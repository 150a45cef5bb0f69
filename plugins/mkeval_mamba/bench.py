"""``mkeval bench mamba-scan``: one training step of this plugin's Mamba against ``transformers``'.

Both models hold the same weights (``to_transformers``); a step is forward, next-token
cross-entropy, backward and an AdamW update. Each row is one sequence length, with the
step time of each implementation (median and interquartile range over the timed steps,
after one warm-up step; ``torch.utils.benchmark`` on CPU, ``triton.testing.do_bench`` on
CUDA) and their ratio. Threads: ``mkeval.threads.choose_threads()``, recorded in ``meta``. Where ``transformers``' step is predicted (quadratically, from the
previous length) to take longer than ``TRANSFORMERS_STEP_BUDGET_S``, that cell is skipped
and a note says so; a warm-up step longer than ``LONG_STEP_S`` is itself the measurement.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from mkeval import BenchmarkResult, UsageError

from .convert import to_transformers
from .model import MambaConfig, MambaLM

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENS = (256, 1024, 4096)
DEFAULT_REPEATS = 3
VOCAB_SIZE = 256
MODEL = dict(d_model=64, n_layer=3)  # the plugin's "tiny" preset
TRANSFORMERS_STEP_BUDGET_S = 300.0
LONG_STEP_S = 10.0
COLUMNS = [
    "seq_len",
    "batch_size",
    "mkeval_backend",
    "mkeval_step_s",
    "mkeval_step_iqr_s",
    "transformers_step_s",
    "transformers_step_iqr_s",
    "speedup",
    "logits_max_abs_diff",
    "mkeval_steps",
    "transformers_steps",
]


def _transformers_path(device: torch.device) -> str:
    """Which Mamba code ``transformers`` runs here (it prefers mamba_ssm, then its own PyTorch loop)."""
    have = {name: importlib.util.find_spec(name) is not None for name in ("mamba_ssm", "causal_conv1d", "kernels")}
    if have["mamba_ssm"] or have["causal_conv1d"]:
        # transformers picks these by import, not by device, so it calls them for CPU tensors too
        installed = " and ".join(name for name in ("mamba_ssm", "causal_conv1d") if have[name])
        return f"{installed} kernels (installed, so transformers uses them on any device)"
    parts = ["PyTorch fallback: MambaMixer's sequential loop over L (mamba_selective_scan)"]
    parts.append("mamba_ssm " + ("importable" if have["mamba_ssm"] else "not installed"))
    parts.append("causal_conv1d " + ("importable" if have["causal_conv1d"] else "not installed"))
    kernels = "package installed" if have["kernels"] else "package not installed, nothing downloaded"
    parts.append(f"hub kernels {kernels}")
    return "; ".join(parts)


def _step_fn(model: torch.nn.Module, logits_of: Callable, ids: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        logits = logits_of(model, ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()

    return step


def _time_steps(step: Callable[[], None], repeats: int, device: torch.device) -> tuple[float, float, int]:
    """(median, interquartile range) of the step time in seconds, and the number of steps timed."""
    from torch.utils.benchmark import Measurement, Timer

    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    warmup = timer.timeit(1)  # only to spot a very long step (torch.utils.benchmark synchronises CUDA)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if warmup.median > LONG_STEP_S:  # one-time costs are small next to a step this long
        return warmup.median, 0.0, 1
    if device.type == "cuda":
        from triton.testing import do_bench

        median, low, high = do_bench(step, warmup=0, rep=100 * repeats, quantiles=[0.5, 0.25, 0.75])
        return median / 1e3, (high - low) / 1e3, 0  # do_bench does not say how many it timed
    m = Measurement.merge([timer.timeit(1) for _ in range(repeats)])[0]
    return m.median, m.iqr, len(m.times)


def _mkeval_logits(model, ids):
    return model(ids)


def _transformers_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def run_scan_benchmark(
    seq_lens: Sequence[int] | None = None,
    batch_size: int | None = None,
    models: Sequence[str] | None = None,
    repeats: int | None = None,
    device: str | torch.device | None = None,
) -> BenchmarkResult:
    """Training-step time of the ``mamba`` plugin and ``transformers``' ``MambaForCausalLM`` at each length."""
    if models and set(models) != {"mamba"}:
        raise UsageError(f"mamba-scan times the 'mamba' model only; got --models {','.join(models)}")
    seq_lens = tuple(seq_lens or DEFAULT_SEQ_LENS)
    batch_size = batch_size or 1
    repeats = repeats or DEFAULT_REPEATS
    device = torch.device(device or "cpu")
    if any(n < 2 for n in seq_lens) or batch_size < 1 or repeats < 1:
        raise UsageError("mamba-scan needs seq_lens >= 2, batch_size >= 1 and repeats >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers must not fetch anything for this
    from mkeval.threads import choose_threads, describe

    threads = choose_threads() if device.type == "cpu" else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows, notes = _measure(seq_lens, batch_size, repeats, device)
    finally:
        torch.set_num_threads(previous_threads)
    import transformers

    meta = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": threads,
        "cpus": describe(threads) if device.type == "cpu" else None,
        "model": {"vocab_size": VOCAB_SIZE, **MODEL},
        "repeats": repeats,
        "transformers_path": _transformers_path(device),
    }
    return BenchmarkResult(rows=rows, columns=COLUMNS, notes=notes, meta=meta)


def _measure(seq_lens, batch_size, repeats, device) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    previous: tuple[int, float] | None = None  # (L, transformers step seconds)
    for length in sorted(seq_lens):
        torch.manual_seed(0)
        ours = MambaLM(MambaConfig(vocab_size=VOCAB_SIZE, **MODEL)).to(device)
        theirs = to_transformers(ours).to(device)
        ids = torch.randint(0, VOCAB_SIZE, (batch_size, length + 1), device=device)
        with torch.no_grad():
            diff = (_mkeval_logits(ours, ids[:, :-1]) - _transformers_logits(theirs, ids[:, :-1])).abs().max().item()
        ours.train()
        theirs.train()
        ours_s, ours_iqr, ours_n = _time_steps(_step_fn(ours, _mkeval_logits, ids), repeats, device)
        row: dict[str, Any] = {
            "seq_len": length,
            "batch_size": batch_size,
            "mkeval_backend": ours.backend,
            "mkeval_step_s": ours_s,
            "mkeval_step_iqr_s": ours_iqr,
            "transformers_step_s": None,
            "transformers_step_iqr_s": None,
            "speedup": None,
            "logits_max_abs_diff": diff,
            "mkeval_steps": ours_n,
            "transformers_steps": 0,
        }
        predicted = previous[1] * (length / previous[0]) ** 2 if previous else 0.0
        if predicted > TRANSFORMERS_STEP_BUDGET_S:
            notes.append(
                f"L={length}: transformers' step skipped, predicted {predicted:.0f} s "
                f"(over the {TRANSFORMERS_STEP_BUDGET_S:.0f} s budget)"
            )
        else:
            log.info("mamba-scan: timing transformers at L=%d (predicted %.1f s a step)", length, predicted)
            theirs_s, theirs_iqr, theirs_n = _time_steps(_step_fn(theirs, _transformers_logits, ids), repeats, device)
            row["transformers_step_s"] = theirs_s
            row["transformers_step_iqr_s"] = theirs_iqr
            row["transformers_steps"] = theirs_n
            row["speedup"] = row["transformers_step_s"] / row["mkeval_step_s"]
            previous = (length, row["transformers_step_s"])
        rows.append(row)

    notes.append(
        f"model: mamba tiny (d_model={MODEL['d_model']}, n_layer={MODEL['n_layer']}, d_state=16, expand=2), "
        f"vocab {VOCAB_SIZE}, batch {batch_size}; step = forward + cross-entropy + backward + AdamW; "
        f"median (and IQR) of the timed steps after one warm-up (a warm-up over {LONG_STEP_S:.0f} s is the only "
        f"measurement); {torch.get_num_threads()} threads"
    )
    notes.append(f"transformers path: {_transformers_path(device)}")
    return rows, notes
