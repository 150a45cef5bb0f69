"""A downstream task for one model unit: fine-tuned and/or prompt-scored (the ``TaskUnit`` job's work).

A unit is a model at one training precision and seed, either pretrained by a language-modelling
cell of the same run (its best checkpoint and the tokenizer saved beside it, read from files) or
built from scratch (the run's tokenizer fitted on the task's own text). Each task starts from a
fresh copy of the unit's weights. It writes ``downstream/<unit>/<task>.json`` (a ``TaskResult``)
and a JSON-lines predictions file per mode.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.taskdata import TaskData
from ..data.taskspec import TaskConfig, canon, render, template_fields
from ..data.tokenizers import Tokenizer, fit_state, make_tokenizer, needs_training
from ..errors import CellFailed
from ..metrics import MetricContext, compute_metrics
from ..protocol import Protocol, stable_hash
from ..registry import Registry
from ..results import CellResult, json_safe, read_json_file, write_json, write_text
from ..results.downstream import TaskResult
from .checkpoint import load_tokenizer, load_weights
from .checks import contract_record, require_contract
from .finetune import finetune, make_kind, predict
from .models import build_model, count_parameters
from .prompting import context_for, score_prompt
from .sizing import match_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pretrained:
    """The language-modelling cell a unit starts from (its result and checkpoint are read from files)."""

    cell: str
    cell_hash: str


@dataclass(frozen=True)
class Unit:
    name: str
    model: str
    precision: str
    seed: int
    size: str | None
    options: dict[str, Any] = field(default_factory=dict)
    match: str | None = None  # scratch units: size to this model's non-embedding parameters
    reference_size: str | None = None
    reference_options: dict[str, Any] = field(default_factory=dict)
    pretrained: Pretrained | None = None
    unmatched: str | None = None  # why the model keeps its own size in a size-matched run

    def identity(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "seed": self.seed, "size": self.size,
                "options": self.options, "match": self.match, "reference_options": self.reference_options,
                "init": "scratch" if self.pretrained is None else f"pretrained:{self.pretrained.cell_hash}"}


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None
    dev_holdout: bool = False
    skip_bad_rows: bool = False


@dataclass(frozen=True)
class Start:
    """What a pretrained unit starts from, read from its cell's result and checkpoint directory."""

    checkpoint: Path
    tokenizer: Tokenizer
    vocab_size: int
    seq_len: int
    options: dict[str, Any]


def start_of(out: Path, pretrained: Pretrained) -> Start:
    """The pretraining cell's checkpoint, tokenizer (its saved ``tokenizer.json``), vocabulary and length."""
    data, why = read_json_file(out / f"{pretrained.cell}.json")
    if why is not None or data.get("cell_hash") != pretrained.cell_hash:
        raise CellFailed(f"its pretraining cell {pretrained.cell} has no finished result here "
                         f"({why or 'another hash'}), so there is no checkpoint to start from")
    cell = CellResult.from_json(data)
    tokenizer = load_tokenizer(out / cell.checkpoint)
    if tokenizer is None:
        raise CellFailed(f"pretraining cell {pretrained.cell} has no text tokenizer to read task text")
    return Start(out / cell.checkpoint, tokenizer, cell.config["dataset"]["vocab_size"], cell.seq_len,
                 dict(cell.config["model"]["options"]))


def config_hash(config: TaskConfig) -> str:
    return stable_hash({k: v for k, v in dataclasses.asdict(config).items() if k != "source_file"})


# --------------------------------------------------------------------------- one task
def scratch_tokenizer(spec: str, config: TaskConfig, data: TaskData) -> tuple[Tokenizer, str]:
    """The run's tokenizer fitted on the task's own text (train, else few-shot, else unlabelled eval inputs)."""
    if not needs_training(spec):
        return make_tokenizer(spec), "nothing (fixed vocabulary)"
    role = next(r for r in ("train", "fewshot", "eval") if data.rows.get(r))
    docs = []
    for row in data.rows[role]:
        where = row["_where"]
        docs.extend(render(t, row, where) for t in config.inputs)
        docs.extend(render(t, row, where) for t in config.choices)
        for name in (config.context, config.question, config.choices_field):
            if name:
                value = row.get(name)
                docs.extend(value if isinstance(value, list) else [str(value)])
        if config.prompt is not None and role != "eval":
            docs.append(context_for(config, row, []) + config.prompt.target_delimiter
                        + render(config.prompt.choices[row["_label"]], row, where))
            docs.extend(render(c, row, where) for c in config.prompt.choices)
    if config.prompt is not None:  # fixed options ("yes", "A") belong to the task, not to any example's label
        docs.extend(c for c in config.prompt.choices if not template_fields(c))
    used = {"train": "the task's train split", "fewshot": "the task's few-shot split",
            "eval": "the eval split's inputs (no labels): the task has no train or few-shot split"}[role]
    return make_tokenizer(spec, fit_state(spec, docs)), used


def _write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    """JSON lines; a non-finite prediction (a diverged regression head) is written as null, so every line
    stays standard JSON."""
    write_text(path, "".join(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records))


def run_task(unit: Unit, config: TaskConfig, data: TaskData, start: Start | None, protocol: Protocol,
             registry: Registry, folder: Path, device: torch.device,
             checks: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Fine-tune and/or prompt-score ``config`` for ``unit``; the result's fields (docs/results.md)."""
    precision = registry.get("precision", unit.precision)
    if start is not None:
        tok, tok_source = start.tokenizer, f"pretraining cell {unit.pretrained.cell}"
        vocab, max_len = start.vocab_size, min(protocol.ft_max_len, start.seq_len)
        build_len, model_options = start.seq_len, dict(start.options)
    else:
        tok, tok_source = scratch_tokenizer(protocol.tokenizer, config, data)
        vocab, max_len, build_len, model_options = tok.vocab_size, protocol.ft_max_len, protocol.ft_max_len, dict(unit.options)
        if unit.match is not None:
            sized = match_params(unit.model, unit.match, vocab, build_len, unit.size, unit.reference_size, registry,
                                 reference_options=unit.reference_options, options=unit.options)
            model_options.update(sized.options)

    def fresh() -> torch.nn.Module:
        model = build_model(unit.model, vocab, build_len, size=unit.size, seed=unit.seed, registry=registry,
                            **model_options).to(device)
        # heads read the last position of right-padded inputs, and prompt scores must not see the answer
        key = (unit.model, unit.size, stable_hash(model_options), vocab)
        contract = contract_record(model, key, vocab, build_len, device, {} if checks is None else checks)
        result["contract_checks"] = contract
        require_contract(contract, unit.model, "task heads and prompt scoring")
        if start is not None:
            load_weights(model, start.checkpoint, device)
        return model

    context = MetricContext(labels=tuple(canon(v) for v in config.labels),
                            positive=None if config.positive_label is None else canon(config.positive_label))
    result: dict[str, Any] = {
        "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
                      "fitted_on": tok_source},
        "max_len": max_len, "model_options": model_options,
        "size_matching": {"matched": unit.unmatched is None, "reference": unit.match, "reason": unit.unmatched},
    }
    if config.finetune:
        if "train" not in data.rows:
            reason = data.missing.get("train", "the task has no train split")
            result["finetune"] = {"status": "skipped", "reason": f"no train split ({reason}); --dev-holdout "
                                  "fine-tunes on a seeded half of the eval split instead"}
        else:
            kind = make_kind(config, tok, max_len, protocol)
            train_enc = [e for i, row in enumerate(data.rows["train"]) for e in kind.encode(i, row)]
            eval_rows = data.rows["eval"]
            eval_enc = [e for i, row in enumerate(eval_rows) for e in kind.encode(i, row)]
            model = fresh()
            result["parameters"] = dataclasses.asdict(count_parameters(model))
            head, outcome = finetune(model, kind, train_enc, protocol, unit.seed, precision, device)
            records = predict(model, kind, head, eval_rows, eval_enc, protocol.ft_batch_size, precision, device)
            path = folder / f"{config.name}.predictions.jsonl"
            _write_predictions(path, records)
            result["finetune"] = {
                "status": "ok", "metrics": compute_metrics(config.metrics, records, context),
                "predictions_file": path.name, "examples": {"train": len(data.rows["train"]), "eval": len(records)},
                "inputs": {"train": len(train_enc), "eval": len(eval_enc)},
                "steps": outcome.steps, "epochs": outcome.epochs, "epoch_losses": outcome.losses,
                "seconds": outcome.seconds, "skipped_nonfinite": outcome.skipped_nonfinite,
                "head_parameters": sum(p.numel() for p in head.parameters()),
            }
            del model, head
    if config.prompt is not None:
        model = fresh()
        result["prompt"] = prompt_modes(model, config, data, tok, max_len, protocol, precision, device, folder,
                                        context)
        del model
    return result


def prompt_modes(model: torch.nn.Module, config: TaskConfig, data: TaskData, tok: Tokenizer, max_len: int,
                 protocol: Protocol, precision: Any, device: torch.device, folder: Path,
                 context: MetricContext) -> dict[str, Any]:
    """Each shot count's log-likelihood scoring: metrics and a predictions file, or why there is no score."""
    modes: dict[str, Any] = {}
    shots_pool = data.rows.get("fewshot", [])
    for k in protocol.fewshot:
        name = f"{k}-shot"
        if k > len(shots_pool):
            modes[name] = {"status": "skipped", "reason": f"{k} shots asked for, the few-shot split has "
                           f"{len(shots_pool)} examples ({data.missing.get('fewshot', 'present')})"}
            continue
        records, notes = score_prompt(model, config, tok, data.rows["eval"], shots_pool[:k], max_len,
                                      protocol.ft_batch_size * len(config.prompt.choices), precision, device)
        if records is None:  # the tokenizer cannot tell the options apart: no number, the reason
            modes[name] = {"status": "degenerate", "reason": notes["degenerate"], "examples": len(data.rows["eval"]),
                           **notes}
            continue
        path = folder / f"{config.name}.{k}shot.predictions.jsonl"
        _write_predictions(path, records)
        modes[name] = {"status": "ok", "metrics": compute_metrics(config.metrics, records, context),
                       "predictions_file": path.name, "examples": len(records), **notes}
    return modes


def task_result(unit: Unit, config: TaskConfig, protocol: Protocol, options: RunOptions, task_hash: str,
                run_info: dict[str, Any], out: Path, **fields: Any) -> TaskResult:
    """The result file's identity and provenance, and ``fields`` (status, modes, data ...)."""
    start = None
    if unit.pretrained is not None:
        start = {"cell": unit.pretrained.cell, "checkpoint": str(out / "checkpoints" / unit.pretrained.cell),
                 "cell_hash": unit.pretrained.cell_hash}
    return TaskResult.from_json({
        "task": config.name, "kind": config.kind, "groups": list(config.groups), "category": config.category,
        "spec_file": config.source_file, "spec_hash": config_hash(config), "model_name": unit.model,
        "metric_names": list(config.metrics), "labels": [canon(v) for v in config.labels],
        "positive_label": None if config.positive_label is None else canon(config.positive_label),
        "unit": unit.name, "seed": unit.seed, "precision": unit.precision,
        "init": "scratch" if unit.pretrained is None else "pretrained", "pretrained_from": start,
        "limit": options.limit, "protocol_hash": protocol.hash, "task_hash": task_hash,
        "git_revision": run_info.get("git_revision"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **fields})


def evaluate_task(unit: Unit, config: TaskConfig, data: TaskData | None, skipped: str | None, protocol: Protocol,
                  registry: Registry, out: Path, device: torch.device, options: RunOptions, task_hash: str,
                  run_info: dict[str, Any], checks: dict[Any, Any] | None = None) -> TaskResult:
    """Run one task for one unit and write its result (a failure is raised, for the executor to record)."""
    if skipped is not None:
        result = task_result(unit, config, protocol, options, task_hash, run_info, out, status="skipped",
                             reason=skipped)
    else:
        start = start_of(out, unit.pretrained) if unit.pretrained is not None else None
        fields = run_task(unit, config, data, start, protocol, registry, out / "downstream" / unit.name, device,
                          checks)
        result = task_result(unit, config, protocol, options, task_hash, run_info, out, status="ok",
                             data=data.info(), **fields)
        if not result.ok_modes():
            reasons = "; ".join(m.reason for m in result.modes().values() if m.reason)
            if any(m.status == "degenerate" for m in result.modes().values()):  # kept whole: says what was
                result = dataclasses.replace(result, status="degenerate", reason=reasons)
            else:
                result = task_result(unit, config, protocol, options, task_hash, run_info, out,
                                     status="skipped", reason=reasons, data=data.info())
    write_json(out / "downstream" / unit.name / f"{config.name}.json", result.to_json())
    return result


def record_failed_task(unit: Unit, config: TaskConfig, protocol: Protocol, options: RunOptions, task_hash: str,
                       run_info: dict[str, Any], out: Path, error: str, traceback_file: str) -> None:
    """The result file of a task that failed: the unit's summary lists it, with the error."""
    result = task_result(unit, config, protocol, options, task_hash, run_info, out, status="failed", error=error,
                         traceback_file=traceback_file)
    write_json(out / "downstream" / unit.name / f"{config.name}.json", result.to_json())
