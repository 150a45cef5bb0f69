"""Everything checked before the first job runs, so that bad input leaves the output directory untouched.

Names, model options and sizes, precisions against the device, sequence lengths, the output
directory, every task's files (a bad row is bad input) and every dataset the run will read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.taskdata import TaskSkipped, load_task_data
from ..data.taskspec import TaskConfig
from ..engine.models import build_model, check_model_options
from ..errors import UsageError
from ..protocol import Protocol
from ..registry import Registry
from .executor import RunContext
from .plan import Job, PrecisionEval, PrecisionRole, TrainCell, model_size


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: CUDA was asked for, but torch sees no CUDA device")
    return dev


def check_writable(out: Path) -> None:
    """Fail before any training if results cannot be written to ``out``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir: {out} exists and is not a directory")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir: cannot write to {out} ({probe_dir} is not writable)")


def supports_checkpointing(registry: Registry, name: str, size: str | None, options: dict[str, Any]) -> bool:
    """Whether the model has ``set_gradient_checkpointing`` (built on the meta device: nothing allocated)."""
    try:
        with torch.device("meta"):
            model = build_model(name, 8, 16, size=size, registry=registry, **options)
    except Exception:  # a build that needs real memory: the cell itself will say
        return True
    return callable(getattr(model, "set_gradient_checkpointing", None))


def check_models(registry: Registry, protocol: Protocol, models: list[str], options: dict[str, dict[str, Any]],
                 where: dict[str, str]) -> None:
    """Model options (against each model's declared options, else a meta-device build), presets,
    gradient checkpointing and sequence lengths; errors name the option or ``file:line``."""
    for name, opts in options.items():
        spec = registry.get("model", name, option=where.get(f"model_options.{name}", "model_options"))
        unknown = [k for k in opts if spec.options is not None and k not in spec.options] if isinstance(opts, dict) else []
        at = where.get(f"model_options.{name}" + (f".{unknown[0]}" if unknown else ""), "model_options")
        check_model_options(name, model_size(registry, protocol, name), opts, at, registry)
    for name in models:
        spec = registry.get("model", name)
        size = model_size(registry, protocol, name)
        if spec.sizes and size is not None and size not in spec.sizes:
            raise UsageError(f"model_size: model {name!r} has no size {size!r}; its sizes are {', '.join(spec.sizes)}")
        if protocol.grad_checkpointing and not supports_checkpointing(registry, name, size, options.get(name, {})):
            raise UsageError(f"grad_checkpointing: model {name!r} has no set_gradient_checkpointing(enabled) method; "
                             "run it without gradient checkpointing or add the method to its plugin")
        too_long = [n for n in protocol.seq_lens if spec.max_seq_len is not None and n > spec.max_seq_len]
        if too_long:
            raise UsageError(f"--seq-len: model {name!r} supports at most {spec.max_seq_len} tokens, asked for {too_long}")


def check_precisions(registry: Registry, precisions: list[PrecisionRole], device: torch.device) -> None:
    for role in precisions:
        spec = registry.get("precision", role.name)
        reason = spec.unsupported(device) if spec.unsupported else None
        if reason:
            raise UsageError(f"precision {role.name!r} cannot run on {device}: {reason}")


def load_tasks(configs: list[TaskConfig], ctx: RunContext) -> list[tuple[TaskConfig, str | None, str | None]]:
    """Every task's data, before anything is written: ``(spec, fingerprint, why skipped)``. Bad rows
    are bad input (exit 2); absent files make the task skipped, with the paths looked for."""
    out = []
    o = ctx.options
    for config in configs:
        try:
            data = load_task_data(config, ctx.data_dir, o.skip_bad_rows, o.limit, o.dev_holdout,
                                  ctx.protocol.data_seed, ctx.readers)
            ctx.task_cache[config.name] = data
            out.append((config, data.fingerprint, None))
        except TaskSkipped as exc:
            out.append((config, None, str(exc)))
    if out and all(skipped for _, _, skipped in out):
        reasons = "; ".join(f"{c.name}: {s}" for c, _, s in out[:5])
        raise UsageError(f"--tasks: none of the {len(out)} task(s) can run here ({reasons}"
                         f"{'; ...' if len(out) > 5 else ''}); check --data-dir")
    return out


def preload_data(jobs: list[Job], ctx: RunContext) -> None:
    """Load every (dataset, seq_len) the jobs read. A dataset that cannot be loaded fails its own jobs
    (they meet the error again); when none of the run's datasets loads, it is bad input."""
    errors: dict[tuple[str, int], Exception] = {}
    for job in jobs:
        if isinstance(job, (TrainCell, PrecisionEval)):
            key = (job.plan.cell.dataset, job.plan.cell.seq_len)
            if key in errors or key in ctx.lm_cache:
                continue
            try:
                ctx.lm_data(job)
            except Exception as exc:  # recorded for the dataset's jobs; the run goes on
                errors[key] = exc
    if errors and not ctx.lm_cache and all(isinstance(e, UsageError) for e in errors.values()):
        raise next(iter(errors.values()))
