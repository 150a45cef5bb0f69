"""One language-modelling cell, end to end: build, measure, train, pick the best checkpoint, test."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import logging
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .batching import limit_windows, make_windows
from .checkpoint import write_checkpoint
from .checks import contract_record, require_contract
from ..errors import CellFailed, PluginError
from .evaluation import evaluate_lm
from .measure import CORE_FLOP_FORMULAS, PeakMemory, count_step_flops, describe_device
from .models import build_model, count_parameters, model_size_mb, recurrent_state, stored_bytes
from .perplexity import split_text_metrics
from .probes import effective_context
from ..protocol import Protocol, stable_hash
from ..registry.manager import Registry
from ..results import CellResult
from .sizing import match_params
from ..registry.contracts import LMData
from ..data.text import reads_test
from .loop import STATE_FILE, WEIGHTS_FILE, Progress, lm_loss, load_checkpoint, read_state, train

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
    limit: int | None
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
               "data_dir": self.data_dir, "limit": self.limit, "match_params": self.match_params,
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
) -> CellResult:
    """Train and evaluate one cell; raises ``CellFailed`` (or any error) when it cannot finish.

    ``checks`` caches the runtime contract checks per model configuration (run before the first
    cell of each); with ``resume``, a training state the cell saved before a stop is continued.
    """
    cell = plan.cell
    precision = registry.get("precision", cell.precision)
    where = f"dataset {cell.dataset!r}"
    splits = cell_windows(data, cell, protocol, ("train", "valid", "test"))
    if len(splits["train"]) < protocol.batch_size:
        raise CellFailed(f"{where}: the train split holds {len(splits['train'])} windows of seq_len {cell.seq_len}, "
                         f"fewer than batch_size {protocol.batch_size}; use a shorter --seq-len or more data")
    val = limit_windows(splits["valid"], protocol.eval_tokens, plan.limit or 0)
    test = limit_windows(splits["test"], protocol.test_tokens, plan.limit or 0)

    options = dict(plan.model_options)
    match = None
    if plan.match_params is not None:
        match = match_params(cell.model, plan.match_params, data.vocab_size, cell.seq_len, plan.model_size,
                             plan.reference_size, registry, reference_options=plan.reference_options,
                             options=plan.model_options)
        options.update(match.options)
    model = build_model(cell.model, data.vocab_size, cell.seq_len, size=plan.model_size, seed=cell.seed,
                        registry=registry, **options).to(device)
    key = (cell.model, plan.model_size, stable_hash(options), data.vocab_size)
    contract = contract_record(model, key, data.vocab_size, cell.seq_len, device, {} if checks is None else checks)
    require_contract(contract, cell.model, "language modelling")
    counts = count_parameters(model)
    size_mb = model_size_mb(model)
    probe = splits["train"].take(torch.arange(protocol.batch_size))
    flops = count_step_flops(
        model, probe.inputs.to(device),
        lambda logits: lm_loss(logits, probe.targets.to(device), probe.mask.to(device)),
        registry.flop_formulas,
    )
    sizing = size_matching(plan, match)
    torch.manual_seed(cell.seed)  # the FLOP probe must not change what training sees
    checkpoint_dir = output_dir / "checkpoints" / plan.name
    checkpoint = checkpoint_dir / WEIGHTS_FILE
    state_path = checkpoint_dir / STATE_FILE
    saved = read_state(state_path, plan.cell_hash) if resume else None
    write_checkpoint(checkpoint_dir, model, name=cell.model, vocab_size=data.vocab_size, max_seq_len=cell.seq_len,
                     size=plan.model_size, options=options, tokenizer=data.tokenizer, registry=registry,
                     weights=False, identity={"name": plan.name, "cell_hash": plan.cell_hash,
                                              "protocol_hash": protocol.hash, "dataset": cell.dataset,
                                              "seq_len": cell.seq_len, "seed": cell.seed, "precision": precision.name,
                                              "model": cell.model, "model_size": plan.model_size})
    with PeakMemory(device) as memory:
        outcome = train(model, splits["train"], val, protocol, cell.seq_len, cell.seed, precision, device,
                        checkpoint, progress, state_path=state_path, resume_from=saved, identity=plan.cell_hash)
    final_eval = outcome.val_evals[-1]
    best_eval = outcome.best_eval
    load_checkpoint(model, checkpoint, device)
    test_eval = evaluate_lm(model, test, protocol.batch_size, precision, device)
    gap = None
    if data.optimal_perplexity is not None:
        gap = test_eval.perplexity / data.optimal_perplexity - 1
    word_ppl, bpb = text_metrics(model, data, test, splits["test"], cell.seq_len, protocol, precision, device)
    context = effective_context(model, test, precision, device, seed=cell.seed)

    model_entry = registry.entry("model", cell.model)
    config = {
        "protocol": protocol.to_dict(),
        "cell": cell.__dict__,
        "model": {
            "name": cell.model,
            "size": plan.model_size,
            "options": options,
            "parameter_match": None if match is None else {
                "reference": match.reference, "reference_non_embedding_params": match.target,
                "non_embedding_params": match.params, "relative_difference": match.relative_difference,
                "knob": match.options},
            "plugin": model_entry.plugin,
            "distribution": model_entry.distribution,
            "backend": getattr(model, "backend", None),
            "causal": getattr(model, "causal", True),
            "no_weight_decay": outcome.no_decay,
        },
        "dataset": {
            "name": cell.dataset,
            "data_dir": plan.data_dir,
            "vocab_size": data.vocab_size,
            "info": data.info,
            "windows": {"train": len(splits["train"]), "valid": len(val), "test": len(test)},
            "scored_tokens": {"valid": val.scored_tokens, "test": test.scored_tokens},
            "splits": {name: s.info for name, s in data.splits.items()},
        },
        "precision": {**precision_record(precision), "role": "trained", "trained_at": precision.name,
                      "loss_scaling": precision.grad_scaling and device.type == "cuda"},
        "limit": plan.limit,
        "training": {"resumed_at_steps": outcome.resumed_at,
                     "checkpoint_interval": protocol.checkpoint_interval},
        "measurement": {
            "flops": "torch.utils.flop_counter.FlopCounterMode, one batch of batch_size x seq_len (docs/flops.md)",
            "custom_flop_formulas": sorted(str(op) for op in {**CORE_FLOP_FORMULAS, **registry.flop_formulas}),
            "memory_method": memory.method,
            "tokens_per_second": "training tokens / seconds spent in optimiser steps",
        },
        "run": run_info,
    }
    return CellResult(
        model_name=cell.model,
        dataset=cell.dataset,
        seq_len=cell.seq_len,
        bits=precision.bits,
        precision=precision.name,
        seed=cell.seed,
        final_loss=outcome.interval_losses[-1],
        final_perplexity=final_eval.perplexity,
        best_perplexity=best_eval.perplexity,
        training_time=outcome.wall_seconds,
        forward_flops=flops.forward,
        backward_flops=flops.backward,
        total_flops=(flops.forward + flops.backward) * outcome.steps,
        peak_memory_mb=memory.peak_mb,
        model_size_mb=size_mb,
        epoch_losses=outcome.interval_losses,
        epoch_perplexities=[e.perplexity for e in outcome.val_evals],
        config=config,
        test_perplexity=test_eval.perplexity,
        test_loss=test_eval.loss,
        test_accuracy=test_eval.accuracy,
        test_tokens=test_eval.tokens,
        test_word_perplexity=word_ppl,
        test_bits_per_byte=bpb,
        optimal_perplexity=data.optimal_perplexity,
        perplexity_gap=gap,
        eval_steps=outcome.eval_steps,
        best_step=outcome.best_step,
        steps=outcome.steps,
        train_tokens=outcome.tokens_trained,
        tokens_per_second=outcome.tokens_trained / outcome.train_seconds if outcome.train_seconds else 0.0,
        skipped_batches=outcome.skipped_nonfinite,
        total_params=counts.total,
        non_embedding_params=counts.non_embedding,
        active_params_per_token=counts.active_per_token,
        state_size=recurrent_state(model),
        size_matching=sizing,
        protocol_hash=protocol.hash,
        cell_hash=plan.cell_hash,
        checkpoint=str(checkpoint_dir.relative_to(output_dir)),
        versions=versions(registry, cell),
        device=describe_device(device),
        git_revision=run_info.get("git_revision"),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        trained_precision=precision.name,
        contract_checks=contract,
        effective_context=context,
        marks=cell_marks(data, plan.split_map, sizing, flops),
        vocabulary=vocabulary(data),
        flop_coverage={"complete": not flops.uncounted, "uncounted_ops": flops.uncounted,
                       "counted_by_op": flops.counted,
                       "elementwise_elements_forward": flops.elementwise_elements_forward,
                       "elementwise_elements_backward": flops.elementwise_elements_backward},
    )


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
    val = limit_windows(windows["valid"], protocol.eval_tokens, plan.limit or 0)
    test = limit_windows(windows["test"], protocol.test_tokens, plan.limit or 0)
    options = dict(base.config["model"]["options"])
    model = build_model(cell.model, data.vocab_size, cell.seq_len, size=plan.model_size, seed=cell.seed,
                        registry=registry, **options).to(device)
    load_checkpoint(model, output_dir / base.checkpoint, device)
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
        "limit": plan.limit,
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


MARKS = {
    "valid_is_train_text": "validation read the same text as training: the best checkpoint and the validation "
                           "perplexity were selected on training text",
    "test_contamination": "the test split was read for training or checkpoint selection "
                          "(--allow-test-contamination): the test perplexity is not held out",
    "size_not_matched": "parameters not matched to the run's reference model",
    "flops_incomplete": "ops with arithmetic and no FLOP formula ran (counted as 0)",
}
"""What a result can be marked with; reports show each mark where its number is (docs/results.md)."""


def cell_marks(data: LMData, split_map: dict[str, str], sizing: dict[str, Any], flops: Any) -> dict[str, str]:
    """The marks of a cell (``MARKS``), each with the detail that earned it."""
    marks = {}
    same = data.info.get("same_text") or []
    if "train" in same and "valid" in same:
        marks["valid_is_train_text"] = MARKS["valid_is_train_text"]
    contaminated = reads_test(split_map)
    if contaminated:
        marks["test_contamination"] = f"{MARKS['test_contamination']}: {', '.join(r + '=test' for r in contaminated)}"
    if sizing.get("reason"):
        marks["size_not_matched"] = sizing["reason"]
    if flops.uncounted:
        marks["flops_incomplete"] = f"{MARKS['flops_incomplete']}: {', '.join(sorted(flops.uncounted))}"
    return marks


def vocabulary(data: LMData) -> dict[str, Any] | None:
    """Which split the tokenizer was fitted on, and how much of the test split it cannot represent."""
    if data.tokenizer is None:
        return None
    test = data.splits["test"].info
    tokens, unk = test.get("tokens"), test.get("unk_tokens")
    return {"tokenizer": data.tokenizer.name, "fitted_on": data.info.get("vocabulary_fitted_on"),
            "test_unk_tokens": unk, "test_unk_rate": unk / tokens if tokens and unk is not None else None}


def size_matching(plan: CellPlan, match: Any) -> dict[str, Any]:
    """How the cell's model was sized: matched to a reference's non-embedding count, or not and why."""
    if match is not None:
        return {"matched": True, "reference": match.reference, "reference_non_embedding_params": match.target,
                "relative_difference": match.relative_difference}
    return {"matched": plan.unmatched is None, "reference": None, "reason": plan.unmatched}


def quantize(registry: Registry, name: str, model: torch.nn.Module) -> dict[str, Any]:
    """Apply post-training precision ``name`` to ``model`` and check what its plugin returned.

    ``quantize(model)`` must return a dict (recorded as the result's ``quantization``); its
    optional ``bytes_after`` (bytes of the weights as stored) must be a non-negative integer and
    is measured here when the plugin does not give it.
    """
    entry = registry.entry("precision", name)
    where = f"precision {name!r} (plugin {entry.plugin!r}, {entry.distribution})"
    returned = entry.spec.quantize(model)
    if not isinstance(returned, dict):
        raise PluginError(f"{where}: quantize(model) returned {type(returned).__name__}; it must return a dict "
                          "describing what it did (see docs/plugins.md)")
    out = dict(returned)
    if "bytes_after" in out:
        value = out["bytes_after"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PluginError(f"{where}: quantize(model) returned bytes_after={value!r}; it must be the weights' "
                              "size in bytes, an integer >= 0 (or leave it out and mkeval measures it)")
    else:
        out["bytes_after"] = stored_bytes(model)
        out["bytes_after_measured_by"] = "mkeval"
    try:
        json.dumps(out, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: quantize(model) returned a dict that is not JSON data ({exc})") from None
    return out


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
