"""The training loop of one cell: AdamW, warmup + cosine, clipping, periodic validation, best checkpoint."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .batching import Windows, training_batches
from .checkpoint import save_weights
from .distributed import SINGLE, World
from ..errors import CellFailed
from .evaluation import LMEval, evaluate_lm
from .measure import Stopwatch
from .precision import autocast, grad_scaler
from ..protocol import Protocol
from ..results import atomic_write
from ..registry.contracts import PrecisionSpec

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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            scored: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the scored targets; with ``scored`` (a global batch's scored-target
    count), this block's share of the global batch's mean."""
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    m = mask.flatten()
    return (losses * m).sum() / (m.sum() if scored is None else scored).clamp(min=1)


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
    resumed_at: list[int] = field(default_factory=list)  # steps this cell was resumed from after a stop
    data_parallel: dict[str, Any] | None = None  # torchrun: ranks, backend, how the auxiliary loss was reduced

    @property
    def best_eval(self) -> LMEval:
        return self.val_evals[self.eval_steps.index(self.best_step)]


class Stepper:
    """One optimiser step, the same for pre-training and fine-tuning.

    The scheduled learning rate (a function of the step index, skipped steps included), the loss
    checked for finiteness (a non-finite one is skipped and counted; ``max_nonfinite`` in a row
    fail the job), dynamic loss scaling where the precision needs it (fp16 on CUDA), clipping of
    the global gradient norm of ``clip_params``, and gradients cleared after each step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, precision: PrecisionSpec, device: torch.device,
                 lr_at: Callable[[int], float], grad_clip: float, max_nonfinite: int,
                 clip_params: list[torch.nn.Parameter], what: str = "training", world: World = SINGLE):
        self.optimizer, self.lr_at, self.grad_clip, self.world, self.device = optimizer, lr_at, grad_clip, world, device
        self.max_nonfinite, self.clip_params, self.what = max_nonfinite, clip_params, what
        self.scaler = grad_scaler(precision, device)
        self.consecutive_bad = 0
        self.skipped = 0

    def step(self, index: int, total: torch.Tensor) -> bool:
        """Optimise ``total`` (the loss to minimise) at step ``index``; False when it was skipped."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(index)
        value = float(total.detach())
        if self.world.parallel:  # every rank skips, or none does (a skipped backward would stall DDP)
            value = self.world.sum([value], self.device)[0]
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive_bad += 1
            log.warning("step %d: non-finite loss, batch skipped (%d in a row)", index, self.consecutive_bad)
            if self.consecutive_bad >= self.max_nonfinite:
                raise CellFailed(f"{self.what} loss was non-finite for {self.consecutive_bad} consecutive batches "
                                 f"(last at step {index}); lower the learning rate or use a more stable precision")
            return False
        self.consecutive_bad = 0
        self.scaler.scale(total).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.clip_params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return True


STATE_FORMAT = 1
STATE_FILE = "training_state.pt"  # the loop's state while the cell trains; removed when it finishes


def _state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                outcome: TrainOutcome, step: int, loop: dict[str, Any], identity: str) -> dict[str, Any]:
    """Everything the loop needs to continue after ``step`` steps exactly as if never stopped."""
    return {
        "format": STATE_FORMAT, "identity": identity, "step": step,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "outcome": {
            "interval_losses": list(outcome.interval_losses), "eval_steps": list(outcome.eval_steps),
            "val_evals": [[e.nll, e.tokens, e.correct] for e in outcome.val_evals],
            "best_step": outcome.best_step, "skipped_nonfinite": outcome.skipped_nonfinite,
            "train_seconds": outcome.train_seconds, "wall_seconds": outcome.wall_seconds,
            "tokens_trained": outcome.tokens_trained, "resumed_at": list(outcome.resumed_at),
        },
        "loop": dict(loop),
    }


def read_state(path: Path, identity: str) -> dict[str, Any] | None:
    """A saved training state for this cell (``identity``: its hash), or None when absent or not this cell's."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as exc:  # a state from an older mkeval or a damaged disk: start over, say so
        log.warning("training state %s cannot be read (%s); the cell starts from step 0", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("identity") != identity:
        log.warning("training state %s belongs to another cell or format; the cell starts from step 0", path)
        return None
    return state


def _restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, outcome: TrainOutcome) -> dict[str, Any]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    saved = state["outcome"]
    outcome.interval_losses = list(saved["interval_losses"])
    outcome.eval_steps = list(saved["eval_steps"])
    outcome.val_evals = [LMEval(nll, tokens, correct) for nll, tokens, correct in saved["val_evals"]]
    for key in ("best_step", "skipped_nonfinite", "train_seconds", "wall_seconds", "tokens_trained"):
        setattr(outcome, key, saved[key])
    outcome.resumed_at = list(saved["resumed_at"]) + [state["step"]]
    return dict(state["loop"])


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
    state_path: Path | None = None,
    resume_from: dict[str, Any] | None = None,
    identity: str = "",
    world: World = SINGLE,
) -> TrainOutcome:
    """Train ``model`` for the protocol's budget; the best validation checkpoint's weights are saved in
    the checkpoint directory ``checkpoint`` (``model.safetensors``).

    Every ``protocol.checkpoint_interval`` steps the whole loop state is saved to ``state_path``
    (atomically); ``resume_from`` (``read_state``'s result) continues from such a state and gives
    the same numbers, bit for bit on a CPU, as a run that was never stopped. Under data
    parallelism (``world``, docs/distributed.md) each rank trains on its block of every global
    batch; rank 0 alone writes the checkpoint and the states.
    """
    steps = protocol.steps(seq_len)
    groups, no_decay = parameter_groups(model, protocol.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=protocol.lr, betas=protocol.betas, eps=protocol.eps)
    stepper = Stepper(optimizer, precision, device, lambda step: protocol.lr * lr_factor(step, steps, protocol),
                      protocol.grad_clip, protocol.max_nonfinite, list(model.parameters()), world=world)
    outcome = TrainOutcome(steps=steps, no_decay=no_decay)
    loop = {"consecutive_bad": 0, "interval_sum": 0.0, "interval_count": 0, "best_loss": math.inf}
    start = 0
    if resume_from is not None:
        loop = _restore(resume_from, model, optimizer, stepper.scaler, outcome)
        stepper.consecutive_bad, stepper.skipped = loop.pop("consecutive_bad"), outcome.skipped_nonfinite
        start = resume_from["step"]
        log.info("resuming training at step %d of %d", start, steps)
    batches = training_batches(train_windows, protocol.batch_size, seed, start=start)
    step_timer = Stopwatch(device, outcome.train_seconds)
    wall_timer = Stopwatch(device, outcome.wall_seconds)
    if protocol.grad_checkpointing:
        if not callable(getattr(model, "set_gradient_checkpointing", None)):
            raise CellFailed("grad_checkpointing: the model has no set_gradient_checkpointing(enabled) method")
        model.set_gradient_checkpointing(True)
    net = data_parallel(model, device, world, outcome) if world.parallel else model
    model.train()
    with wall_timer:
        for step in range(start, steps):
            batch = next(batches)
            with step_timer:
                total, loss_value = _step_loss(net, model, batch, precision, device, world)
                if stepper.step(step, total):
                    loop["interval_sum"] += loss_value
                    loop["interval_count"] += 1
                    outcome.tokens_trained += batch.inputs.numel()
                outcome.skipped_nonfinite = stepper.skipped
            if progress is not None:
                tps = outcome.tokens_trained / step_timer.seconds if step_timer.seconds else 0.0
                progress("step", step=step + 1, steps=steps, loss=loss_value, tokens_per_second=tps)
            if (step + 1) % protocol.eval_interval == 0 or step + 1 == steps:
                result = _validate(model, val_windows, protocol, precision, device, step + 1, outcome, loop,
                                   checkpoint, world)
                if progress is not None:
                    progress("eval", step=step + 1, steps=steps, perplexity=result.perplexity)
            interval = protocol.checkpoint_interval
            if state_path is not None and interval and (step + 1) % interval == 0 and step + 1 < steps:
                outcome.train_seconds, outcome.wall_seconds = step_timer.seconds, wall_timer.elapsed()
                loop_state = {**loop, "consecutive_bad": stepper.consecutive_bad}
                world.on_main(lambda: _save_state(state_path, model, optimizer, stepper, outcome, step + 1, loop_state,
                                                  identity), device, "saving the training state")
                if progress is not None and world.main:
                    progress("saved_state", step=step + 1, steps=steps)
    outcome.train_seconds = step_timer.seconds
    outcome.wall_seconds = wall_timer.seconds
    if world.parallel and callable(getattr(model, "set_data_parallel", None)):
        model.set_data_parallel(False)  # evaluation scores each rank's own windows
    if outcome.best_step < 0:
        raise CellFailed("validation loss was never finite; no checkpoint to evaluate")
    return outcome


def _save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, stepper: Stepper,
                outcome: TrainOutcome, step: int, loop: dict[str, Any], identity: str) -> None:
    """The whole loop state after ``step`` steps, written atomically (rank 0 only, through ``World.on_main``)."""
    state = _state_dict(model, optimizer, stepper.scaler, outcome, step, loop, identity)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def data_parallel(model: nn.Module, device: torch.device, world: World, outcome: TrainOutcome) -> nn.Module:
    """``model`` wrapped for data-parallel training (its replicas start from rank 0's weights).

    A model whose auxiliary loss uses statistics of the batch (a load-balancing loss) computes
    them over the global batch when it has ``set_data_parallel(enabled)``; otherwise DDP averages
    the per-rank auxiliary losses, and the result says so."""
    from torch.nn.parallel import DistributedDataParallel

    aux = hasattr(model, "auxiliary_loss")
    hook = callable(getattr(model, "set_data_parallel", None))
    if hook:
        model.set_data_parallel(True)
    outcome.data_parallel = {"world_size": world.size, "backend": world.backend,
                             "auxiliary_loss": None if not aux else "global batch" if hook else "mean over ranks"}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _step_loss(net: nn.Module, model: nn.Module, batch: Any, precision: PrecisionSpec, device: torch.device,
               world: World) -> tuple[torch.Tensor, float]:
    """The loss to minimise on one global batch and the batch's mean LM loss (nats).

    One process: the mean over the batch's scored targets. Data-parallel: this rank's rows, their
    summed loss over the *global* scored count, times the world size (DDP averages gradients), so
    the gradient equals one process's; the reported loss is reduced over ranks."""
    scored = batch.mask.sum().to(device) if world.parallel else None
    rows = world.rows(batch.inputs.shape[0]) if world.parallel else slice(None)
    inputs = batch.inputs[rows].to(device, non_blocking=True)
    targets = batch.targets[rows].to(device, non_blocking=True)
    mask = batch.mask[rows].to(device, non_blocking=True)
    with autocast(precision, device):
        logits = net(inputs)
        loss = lm_loss(logits, targets, mask, scored)
        aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
        total = loss * world.size if world.parallel else loss
        total = total + aux if aux is not None else total
    value = float(loss.detach())
    if world.parallel:
        value = world.sum([value], device)[0]
    return total, value


def _validate(model: nn.Module, windows: Windows, protocol: Protocol, precision: PrecisionSpec,
              device: torch.device, step: int, outcome: TrainOutcome, loop: dict[str, Any],
              checkpoint: Path, world: World = SINGLE) -> LMEval:
    """A validation point: the interval's mean training loss, the validation evaluation, and the
    checkpoint kept (by rank 0) when it is the best so far."""
    hook = world.parallel and callable(getattr(model, "set_data_parallel", None))
    if hook:  # each rank scores its own windows, maybe one batch more than another: no collective inside
        model.set_data_parallel(False)
    try:
        result = evaluate_lm(model, windows, protocol.batch_size, precision, device, world)
    finally:
        if hook:
            model.set_data_parallel(True)
    count = loop["interval_count"]
    outcome.interval_losses.append(loop["interval_sum"] / count if count else math.nan)
    loop["interval_sum"], loop["interval_count"] = 0.0, 0
    outcome.eval_steps.append(step)
    outcome.val_evals.append(result)
    if math.isfinite(result.loss) and result.loss < loop["best_loss"]:
        loop["best_loss"] = result.loss
        outcome.best_step = step
        world.on_main(lambda: save_weights(checkpoint, model), device, "saving the best checkpoint")
    return result


