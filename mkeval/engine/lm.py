"""One language-modelling cell, end to end: build, measure, train, pick the best checkpoint, test."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import logging
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import CellFailed
from ..protocol import Protocol, stable_hash
from ..registry import Registry
from ..registry.contracts import LMData
from ..results import CellResult
from .batching import Windows, limit_windows, make_windows
from .checkpoint import load_weights, write_checkpoint
from .checks import contract_record, require_contract
from .distributed import SINGLE, World
from .evaluation import evaluate_lm
from .loop import STATE_FILE, Progress, lm_loss, read_state, train
from .measure import CORE_FLOP_FORMULAS, PeakMemory, count_step_flops, describe_device
from .models import build_model, count_parameters, model_size_mb, recurrent_state
from .perplexity import split_text_metrics
from .probes import effective_context
from .record import cell_marks, flop_coverage, quantize, size_matching, vocabulary
from .sizing import match_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One point of the matrix."""

    model: str
    dataset: str
    seq_len: int
    precision: str
    seed: int


@dataclass(frozen=True)
class CellPlan:
    """A cell with everything that identifies its result."""

    cell: Cell
    name: str  # result file stem
    cell_hash: str
    model_size: str | None
    model_options: dict[str, Any]
    data_dir: str | None
    limit_windows: int | None  # --limit-windows (its hash key is "limit", as before the option was split)
    match_params: str | None = None  # reference model whose non-embedding count this model is sized to
    reference_size: str | None = None
    split_map: dict[str, str] = dataclasses.field(default_factory=dict)
    reference_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    evaluates: str | None = None  # a precision sweep: the cell whose checkpoint this one evaluates
    evaluates_hash: str | None = None  # ... and that cell's hash (a retrained checkpoint is a new number)
    quantizer: str | None = None  # a post-training precision: its method and library version
    role: str = "trained"  # "trained" | "post-training" | "evaluation-only" (not in the hash: the fields above say it)
    unmatched: str | None = None  # why the model keeps its own size in a size-matched run (not in the hash)

    @property
    def identity(self) -> dict[str, Any]:
        out = {"cell": self.cell.__dict__, "model_size": self.model_size, "model_options": self.model_options,
               "data_dir": self.data_dir, "limit": self.limit_windows, "match_params": self.match_params,
               "reference_options": self.reference_options, "split_map": self.split_map,
               "dataset_options": self.dataset_options}
        if self.evaluates is not None:  # absent otherwise, so training cells keep their hashes
            out.update(evaluates=self.evaluates, evaluates_hash=self.evaluates_hash, quantizer=self.quantizer)
        return out


def cell_windows(data: LMData, cell: Cell, protocol: Protocol, roles: tuple[str, ...]) -> dict[str, Any]:
    """The cell's windows per split: train non-overlapping, valid/test with the protocol's stride and the tail."""
    where = f"dataset {cell.dataset!r}"
    out = {}
    for split in roles:
        if split not in data.splits:
            raise CellFailed(f"{where} has no {split!r} split (it has {', '.join(data.splits)})")
        out[split] = make_windows(data.splits[split], cell.seq_len, cover_tail=split != "train",
                                  stride=None if split == "train" else protocol.eval_stride or None,
                                  where=f"{where}, split {split!r}")
    return out


def precision_record(precision: Any) -> dict[str, Any]:
    """What a result says about its precision."""
    dtype = precision.autocast_dtype
    return {"name": precision.name, "bits": precision.bits,
            "autocast_dtype": str(dtype).replace("torch.", "") if dtype else None}


def evaluation_windows(windows: dict[str, Windows], protocol: Protocol, plan: CellPlan) -> tuple[Windows, Windows]:
    """The validation and test windows a cell scores: capped by the protocol's token budgets and
    ``--limit-windows``, the same for a training cell and its evaluations at other precisions."""
    n = plan.limit_windows or 0
    return (limit_windows(windows["valid"], protocol.eval_tokens, n),
            limit_windows(windows["test"], protocol.test_tokens, n))


def run_cell(
    plan: CellPlan,
    data: LMData,
    protocol: Protocol,
    registry: Registry,
    output_dir: Path,
    device: torch.device,
    run_info: dict[str, Any],
    progress: Progress | None = None,
    checks: dict[Any, Any] | None = None,
    resume: bool = False,
    world: World = SINGLE,
) -> CellResult | None:
    """Train and evaluate one cell; raises ``CellFailed`` (or any error) when it cannot finish.

    ``checks`` caches the runtime contract checks per model configuration (run before the first
    cell of each); with ``resume``, a training state the cell saved before a stop is continued.
    Under data parallelism (``world``) every rank trains and evaluates its share; rank 0 writes
    and returns the result, the other ranks return None after the test evaluation.
    """
    cell = plan.cell
    precision = registry.get("precision", cell.precision)
    splits = cell_windows(data, cell, protocol, ("train", "valid", "test"))
    if len(splits["train"]) < protocol.batch_size:
        raise CellFailed(f"dataset {cell.dataset!r}: the train split holds {len(splits['train'])} windows of seq_len "
                         f"{cell.seq_len}, fewer than batch_size {protocol.batch_size}; use a shorter --seq-len or "
                         "more data")
    val, test = evaluation_windows(splits, protocol, plan)
    model, options, match, contract = build_for(plan, data.vocab_size, registry, device, checks)
    probe = splits["train"].take(torch.arange(protocol.batch_size))
    flops = count_step_flops(model, probe.inputs.to(device),
                             lambda logits: lm_loss(logits, probe.targets.to(device), probe.mask.to(device)),
                             registry.flop_formulas)
    torch.manual_seed(cell.seed)  # the FLOP probe must not change what training sees
    checkpoint_dir = output_dir / "checkpoints" / plan.name
    state_path = checkpoint_dir / STATE_FILE
    world.on_main(lambda: _write_checkpoint_metadata(checkpoint_dir, model, plan, data, options, registry, protocol,
                                                     precision.name), device, "writing the checkpoint directory")
    with PeakMemory(device) as memory:
        outcome = train(model, splits["train"], val, protocol, cell.seq_len, cell.seed, precision, device,
                        checkpoint_dir, progress, state_path=state_path,
                        resume_from=read_state(state_path, plan.cell_hash) if resume else None,
                        identity=plan.cell_hash, world=world)
    if world.main:
        load_weights(model, checkpoint_dir, device)
    world.broadcast_module(model)  # the best checkpoint, on every rank
    test_eval = evaluate_lm(model, test, protocol.batch_size, precision, device, world)
    if not world.main:
        return None
    word_ppl, bpb = text_metrics(model, data, test, splits["test"], cell.seq_len, protocol, precision, device)
    sizing = size_matching(plan, match)
    config = cell_config(plan, data, protocol, registry, model, options, match, outcome, memory, run_info,
                         {"train": splits["train"], "valid": val, "test": test}, device)
    counts = count_parameters(model)
    return CellResult(
        model_name=cell.model, dataset=cell.dataset, seq_len=cell.seq_len, bits=precision.bits,
        precision=precision.name, seed=cell.seed, final_loss=outcome.interval_losses[-1],
        final_perplexity=outcome.val_evals[-1].perplexity, best_perplexity=outcome.best_eval.perplexity,
        training_time=outcome.wall_seconds, forward_flops=flops.forward, backward_flops=flops.backward,
        total_flops=(flops.forward + flops.backward) * outcome.steps, peak_memory_mb=memory.peak_mb,
        model_size_mb=model_size_mb(model), epoch_losses=outcome.interval_losses,
        epoch_perplexities=[e.perplexity for e in outcome.val_evals], config=config,
        test_perplexity=test_eval.perplexity, test_loss=test_eval.loss, test_accuracy=test_eval.accuracy,
        test_tokens=test_eval.tokens, test_word_perplexity=word_ppl, test_bits_per_byte=bpb,
        optimal_perplexity=data.optimal_perplexity,
        perplexity_gap=None if data.optimal_perplexity is None else test_eval.perplexity / data.optimal_perplexity - 1,
        eval_steps=outcome.eval_steps, best_step=outcome.best_step, steps=outcome.steps,
        train_tokens=outcome.tokens_trained,
        tokens_per_second=outcome.tokens_trained / outcome.train_seconds if outcome.train_seconds else 0.0,
        skipped_batches=outcome.skipped_nonfinite, total_params=counts.total,
        non_embedding_params=counts.non_embedding, active_params_per_token=counts.active_per_token,
        state_size=recurrent_state(model), size_matching=sizing, protocol_hash=protocol.hash,
        cell_hash=plan.cell_hash, checkpoint=str(checkpoint_dir.relative_to(output_dir)),
        versions=versions(registry, cell), device=describe_device(device), git_revision=run_info.get("git_revision"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        trained_precision=precision.name, contract_checks=contract,
        effective_context=effective_context(model, test, precision, device, seed=cell.seed),
        marks=cell_marks(data, plan.split_map, sizing, flops), vocabulary=vocabulary(data),
        flop_coverage=flop_coverage(flops))


def _write_checkpoint_metadata(checkpoint_dir: Path, model: torch.nn.Module, plan: CellPlan, data: LMData,
                               options: dict[str, Any], registry: Registry, protocol: Protocol, precision: str) -> None:
    """The checkpoint directory's files other than the weights (written before training: self-contained)."""
    cell = plan.cell
    write_checkpoint(checkpoint_dir, model, name=cell.model, vocab_size=data.vocab_size, max_seq_len=cell.seq_len,
                     size=plan.model_size, options=options, tokenizer=data.tokenizer, registry=registry,
                     weights=False, identity={"name": plan.name, "cell_hash": plan.cell_hash,
                                              "protocol_hash": protocol.hash, "dataset": cell.dataset,
                                              "seq_len": cell.seq_len, "seed": cell.seed, "precision": precision,
                                              "model": cell.model, "model_size": plan.model_size})


def build_for(plan: CellPlan, vocab_size: int, registry: Registry, device: torch.device,
              checks: dict[Any, Any] | None) -> tuple[torch.nn.Module, dict[str, Any], Any, dict[str, Any]]:
    """The cell's model (sized to its reference when matched, seeded), its options, the match, and the
    runtime contract checks (run once per model configuration; a failed one refuses the model)."""
    cell = plan.cell
    options = dict(plan.model_options)
    match = None
    if plan.match_params is not None:
        match = match_params(cell.model, plan.match_params, vocab_size, cell.seq_len, plan.model_size,
                             plan.reference_size, registry, reference_options=plan.reference_options,
                             options=plan.model_options)
        options.update(match.options)
    model = build_model(cell.model, vocab_size, cell.seq_len, size=plan.model_size, seed=cell.seed,
                        registry=registry, **options).to(device)
    key = (cell.model, plan.model_size, stable_hash(options), vocab_size)
    contract = contract_record(model, key, vocab_size, cell.seq_len, device, {} if checks is None else checks)
    require_contract(contract, cell.model, "language modelling")
    return model, options, match, contract


def cell_config(plan: CellPlan, data: LMData, protocol: Protocol, registry: Registry, model: torch.nn.Module,
                options: dict[str, Any], match: Any, outcome: Any, memory: Any, run_info: dict[str, Any],
                windows: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The result's ``config``: everything needed to reproduce the cell (docs/results.md)."""
    cell = plan.cell
    precision = registry.get("precision", cell.precision)
    entry = registry.entry("model", cell.model)
    return {
        "protocol": protocol.to_dict(),
        "cell": cell.__dict__,
        "model": {"name": cell.model, "size": plan.model_size, "options": options,
                  "parameter_match": None if match is None else {
                      "reference": match.reference, "reference_non_embedding_params": match.target,
                      "non_embedding_params": match.params, "relative_difference": match.relative_difference,
                      "knob": match.options},
                  "plugin": entry.plugin, "distribution": entry.distribution,
                  "backend": getattr(model, "backend", None), "causal": getattr(model, "causal", True),
                  "no_weight_decay": outcome.no_decay},
        "dataset": {"name": cell.dataset, "data_dir": plan.data_dir, "vocab_size": data.vocab_size, "info": data.info,
                    "windows": {k: len(w) for k, w in windows.items()},
                    "scored_tokens": {"valid": windows["valid"].scored_tokens, "test": windows["test"].scored_tokens},
                    "splits": {name: s.info for name, s in data.splits.items()}},
        "precision": {**precision_record(precision), "role": "trained", "trained_at": precision.name,
                      "loss_scaling": precision.grad_scaling and device.type == "cuda"},
        "limit_windows": plan.limit_windows,
        "training": {"resumed_at_steps": outcome.resumed_at, "checkpoint_interval": protocol.checkpoint_interval,
                     "data_parallel": outcome.data_parallel},
        "measurement": {
            "flops": "torch.utils.flop_counter.FlopCounterMode, one batch of batch_size x seq_len (docs/flops.md)",
            "custom_flop_formulas": sorted(str(op) for op in {**CORE_FLOP_FORMULAS, **registry.flop_formulas}),
            "memory_method": memory.method,
            "tokens_per_second": "training tokens / seconds spent in optimiser steps"},
        "run": run_info,
    }


def finish_cell(output_dir: Path, result: CellResult) -> None:
    """After the result is written: the training state is no longer needed."""
    (output_dir / result.checkpoint / STATE_FILE).unlink(missing_ok=True)


def evaluate_cell(
    plan: CellPlan,
    base: CellResult,
    data: LMData,
    protocol: Protocol,
    registry: Registry,
    output_dir: Path,
    device: torch.device,
    run_info: dict[str, Any],
) -> CellResult:
    """A precision sweep's other precisions: ``base``'s best checkpoint evaluated at ``plan``'s
    precision (quantized first, for a post-training precision). Nothing is retrained, so the
    perplexity deltas are paired; the checkpoint on disk is never modified."""
    cell = plan.cell
    precision = registry.get("precision", cell.precision)
    windows = cell_windows(data, cell, protocol, ("valid", "test"))
    val, test = evaluation_windows(windows, protocol, plan)
    options = dict(base.config["model"]["options"])
    model = build_model(cell.model, data.vocab_size, cell.seq_len, size=plan.model_size, seed=cell.seed,
                        registry=registry, **options).to(device)
    load_weights(model, output_dir / base.checkpoint, device)
    quantization = quantize(registry, cell.precision, model) if precision.quantize is not None else None
    with PeakMemory(device) as memory:
        val_eval = evaluate_lm(model, val, protocol.batch_size, precision, device)
        test_eval = evaluate_lm(model, test, protocol.batch_size, precision, device)
    word_ppl, bpb = text_metrics(model, data, test, windows["test"], cell.seq_len, protocol, precision, device)
    size_mb = quantization["bytes_after"] / 2**20 if quantization else model_size_mb(model)
    config = {
        **base.config,
        "cell": cell.__dict__,
        "precision": {**precision_record(precision), "role": plan.role, "trained_at": base.precision,
                      "evaluation_only": True},
        "limit_windows": plan.limit_windows,
        "run": run_info,
    }
    delta = test_eval.perplexity - base.test_perplexity
    return dataclasses.replace(
        base,
        precision=precision.name,
        bits=precision.bits,
        final_perplexity=val_eval.perplexity,
        best_perplexity=val_eval.perplexity,
        peak_memory_mb=memory.peak_mb,
        model_size_mb=size_mb,
        config=config,
        test_perplexity=test_eval.perplexity,
        test_loss=test_eval.loss,
        test_accuracy=test_eval.accuracy,
        test_tokens=test_eval.tokens,
        test_word_perplexity=word_ppl,
        test_bits_per_byte=bpb,
        perplexity_gap=None if base.optimal_perplexity is None else test_eval.perplexity / base.optimal_perplexity - 1,
        cell_hash=plan.cell_hash,
        versions=versions(registry, cell),
        device=describe_device(device),
        git_revision=run_info.get("git_revision"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        trained_precision=base.precision,
        precision_role=plan.role,
        evaluated_checkpoint_of=plan.evaluates,
        perplexity_delta=delta,
        relative_perplexity_delta=delta / base.test_perplexity,
        quantization=quantization,
        contract_checks=base.contract_checks,
        effective_context=None,  # probed on the trained checkpoint only (its training cell's result)
    )


def text_metrics(model: torch.nn.Module, data: LMData, scored: Any, whole: Any, seq_len: int, protocol: Protocol,
                 precision: Any, device: torch.device) -> tuple[float | None, float | None]:
    r"""Word perplexity and bits per byte exactly as lm-evaluation-harness defines them (docs/interop.md):
    every document of the test split scored on its own, ``<eos>`` never a target, words counted by
    ``re.split(r"\s+")``. Only when the whole test split of a text dataset is scored (else None)."""
    if data.tokenizer is None or scored.scored_tokens != whole.scored_tokens:
        return None, None
    return split_text_metrics(model, data.splits["test"], data.tokenizer.eos_id, seq_len, protocol.batch_size,
                              precision, device)


def versions(registry: Registry, cell: Cell) -> dict[str, str]:
    """Versions of everything that can change the number."""
    out = {"mkeval": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for dist in ("transformers", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    for kind, name in (("model", cell.model), ("dataset", cell.dataset), ("precision", cell.precision)):
        dist = registry.entry(kind, name).distribution
        try:
            out[f"{kind}_plugin:{dist}"] = importlib.metadata.version(dist)
        except (importlib.metadata.PackageNotFoundError, ValueError):
            out[f"{kind}_plugin:{dist}"] = "unknown"
    return out


def git_revision() -> str | None:
    """The commit of the mkeval source tree (with ``+dirty`` for local changes), if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
