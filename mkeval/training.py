"""The training loop of one cell: AdamW, warmup + cosine, clipping, periodic validation, best checkpoint."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from .batching import Windows, training_batches
from .errors import CellFailed
from .evaluation import LMEval, evaluate_lm
from .measure import Stopwatch
from .precision import autocast, grad_scaler
from .protocol import Protocol
from .specs import PrecisionSpec

log = logging.getLogger(__name__)

Progress = Callable[..., None]


def parameter_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict[str, Any]], list[str]]:
    """AdamW groups: decay for matrices; none for norms, biases, embeddings and what the model marks.

    Returns the groups and the names of the parameters that get no decay.
    """
    marked = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, no_decay_names = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embedding_params or name in marked:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return groups, no_decay_names


def lr_factor(step: int, total_steps: int, protocol: Protocol) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based): linear warmup, then cosine."""
    warmup = min(protocol.warmup_steps, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(total_steps - warmup - 1, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return protocol.min_lr_ratio + (1 - protocol.min_lr_ratio) * cosine


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored targets."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    m = mask.flatten()
    return (losses * m).sum() / m.sum().clamp(min=1)


@dataclass
class TrainOutcome:
    steps: int
    interval_losses: list[float] = field(default_factory=list)  # mean train loss per eval interval, nats
    eval_steps: list[int] = field(default_factory=list)
    val_evals: list[LMEval] = field(default_factory=list)
    best_step: int = -1
    skipped_nonfinite: int = 0
    train_seconds: float = 0.0  # optimiser steps only
    wall_seconds: float = 0.0  # steps and periodic validation
    tokens_trained: int = 0
    no_decay: list[str] = field(default_factory=list)

    @property
    def best_eval(self) -> LMEval:
        return self.val_evals[self.eval_steps.index(self.best_step)]


def train(
    model: nn.Module,
    train_windows: Windows,
    val_windows: Windows,
    protocol: Protocol,
    seq_len: int,
    seed: int,
    precision: PrecisionSpec,
    device: torch.device,
    checkpoint: Path,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Train ``model`` for the protocol's budget; the best validation checkpoint is saved to ``checkpoint``."""
    steps = protocol.steps(seq_len)
    groups, no_decay = parameter_groups(model, protocol.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=protocol.lr, betas=protocol.betas, eps=protocol.eps)
    scaler = grad_scaler(precision, device)
    outcome = TrainOutcome(steps=steps, no_decay=no_decay)
    batches = training_batches(train_windows, protocol.batch_size, seed)
    step_timer = Stopwatch(device)
    wall_timer = Stopwatch(device)
    consecutive_bad = 0
    interval_sum, interval_count = 0.0, 0
    best_loss = math.inf
    if protocol.grad_checkpointing:
        if not callable(getattr(model, "set_gradient_checkpointing", None)):
            raise CellFailed("grad_checkpointing: the model has no set_gradient_checkpointing(enabled) method")
        model.set_gradient_checkpointing(True)
    model.train()
    with wall_timer:
        for step in range(steps):
            batch = next(batches)
            for group in optimizer.param_groups:  # the schedule follows the step index, skipped batches included
                group["lr"] = protocol.lr * lr_factor(step, steps, protocol)
            with step_timer:
                inputs = batch.inputs.to(device, non_blocking=True)
                targets = batch.targets.to(device, non_blocking=True)
                mask = batch.mask.to(device, non_blocking=True)
                with autocast(precision, device):
                    logits = model(inputs)
                    loss = lm_loss(logits, targets, mask)
                    aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
                    total = loss + aux if aux is not None else loss
                loss_value = float(loss.detach())
                if not math.isfinite(float(total.detach())):
                    optimizer.zero_grad(set_to_none=True)
                    outcome.skipped_nonfinite += 1
                    consecutive_bad += 1
                    log.warning("step %d: non-finite loss, batch skipped (%d in a row)", step, consecutive_bad)
                    if consecutive_bad >= protocol.max_nonfinite:
                        raise CellFailed(
                            f"training loss was non-finite for {consecutive_bad} consecutive batches "
                            f"(last at step {step}); lower --lr or use a more stable precision"
                        )
                else:
                    consecutive_bad = 0
                    scaler.scale(total).backward()
                    if protocol.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), protocol.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    interval_sum += loss_value
                    interval_count += 1
                    outcome.tokens_trained += inputs.numel()
            if progress is not None:
                tps = outcome.tokens_trained / step_timer.seconds if step_timer.seconds else 0.0
                progress("step", step=step + 1, steps=steps, loss=loss_value, tokens_per_second=tps)
            if (step + 1) % protocol.eval_interval == 0 or step + 1 == steps:
                result = evaluate_lm(model, val_windows, protocol.batch_size, precision, device)
                outcome.interval_losses.append(interval_sum / interval_count if interval_count else math.nan)
                interval_sum, interval_count = 0.0, 0
                outcome.eval_steps.append(step + 1)
                outcome.val_evals.append(result)
                if math.isfinite(result.loss) and result.loss < best_loss:
                    best_loss = result.loss
                    outcome.best_step = step + 1
                    save_checkpoint(model, checkpoint)
                if progress is not None:
                    progress("eval", step=step + 1, steps=steps, perplexity=result.perplexity)
    outcome.train_seconds = step_timer.seconds
    outcome.wall_seconds = wall_timer.seconds
    if outcome.best_step < 0:
        raise CellFailed("validation loss was never finite; no checkpoint to evaluate")
    return outcome


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Write the model's weights as safetensors, atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_model(model, str(tmp))
    os.replace(tmp, path)


def load_checkpoint(model: nn.Module, path: Path, device: torch.device) -> None:
    safetensors.torch.load_model(model, str(path), device=str(device))
