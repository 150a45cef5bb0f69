"""Downstream evaluation of one model (a "unit"): every task fine-tuned and/or prompt-scored.

A unit is a model at one precision and seed, either pretrained by a language-modelling
cell of the same run (its best checkpoint and its tokenizer) or built from scratch (the
run's tokenizer fitted on each task's own training text). Each task starts from a fresh
copy of the unit's weights. Per task: ``downstream/<unit>/<task>.json`` and a JSON-lines
predictions file per mode; per unit: ``<unit>_downstream.json`` (see ``docs/results.md``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CellFailed
from .checks import contract_record, require_contract
from .finetune import finetune, make_kind, predict
from .loglikelihood import context_for, score_prompt
from .metrics import MetricContext, benchmark_average, compute_metrics, task_score
from .models import build_model, count_parameters
from .protocol import Protocol, stable_hash
from .registry import Registry
from .results import json_safe, read_json_file, write_json, write_text
from .sizing import match_params
from .taskdata import TaskData
from .taskspec import TaskConfig, canon, render, template_fields
from .tokenizers import Tokenizer, fit_state, make_tokenizer, needs_training
from .training import load_checkpoint

log = logging.getLogger(__name__)
LEADERBOARDS = ("glue", "superglue")  # groups averaged as their leaderboards do


@dataclass(frozen=True)
class Pretrained:
    """What a unit inherits from its language-modelling cell."""

    cell: str
    checkpoint: Path
    tokenizer: Tokenizer
    vocab_size: int
    seq_len: int
    options: dict[str, Any]
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


@dataclass
class TaskInput:
    """A task of the run with its loaded data, or the reason it is skipped."""

    config: TaskConfig
    data: TaskData | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None
    dev_holdout: bool = False
    skip_bad_rows: bool = False


def config_hash(config: TaskConfig) -> str:
    return stable_hash({k: v for k, v in dataclasses.asdict(config).items() if k != "source_file"})


def task_hash(unit: Unit, task: TaskInput, protocol: Protocol, options: RunOptions) -> str:
    return stable_hash({"protocol": protocol.replace(seeds=(unit.seed,)).identity(), "unit": unit.identity(),
                        "task": config_hash(task.config), "data": task.data.fingerprint if task.data else None,
                        "options": dataclasses.asdict(options)})


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


def run_task(unit: Unit, task: TaskInput, protocol: Protocol, registry: Registry, folder: Path,
             device: torch.device, options: RunOptions, checks: dict[Any, Any] | None = None) -> dict[str, Any]:
    config, data = task.config, task.data
    precision = registry.get("precision", unit.precision)
    if unit.pretrained is not None:
        tok, tok_source = unit.pretrained.tokenizer, f"pretraining cell {unit.pretrained.cell}"
        vocab, max_len = unit.pretrained.vocab_size, min(protocol.ft_max_len, unit.pretrained.seq_len)
        build_len, model_options = unit.pretrained.seq_len, dict(unit.pretrained.options)
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
        if unit.pretrained is not None:
            load_checkpoint(model, unit.pretrained.checkpoint, device)
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
        modes: dict[str, Any] = {}
        model = fresh()
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
                modes[name] = {"status": "degenerate", "reason": notes["degenerate"],
                               "examples": len(data.rows["eval"]), **notes}
                continue
            path = folder / f"{config.name}.{k}shot.predictions.jsonl"
            _write_predictions(path, records)
            modes[name] = {"status": "ok", "metrics": compute_metrics(config.metrics, records, context),
                           "predictions_file": path.name, "examples": len(records), **notes}
        result["prompt"] = modes
        del model
    return result


def evaluate_task(unit: Unit, task: TaskInput, protocol: Protocol, registry: Registry, out: Path,
                  device: torch.device, options: RunOptions, run_info: dict[str, Any],
                  checks: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Run one task for one unit, write its result; a failure is recorded, never raised."""
    config = task.config
    folder = out / "downstream" / unit.name
    base = {"task": config.name, "kind": config.kind, "groups": list(config.groups), "category": config.category,
            "spec_file": config.source_file, "spec_hash": config_hash(config), "model_name": unit.model,
            "metric_names": list(config.metrics), "labels": [canon(v) for v in config.labels],
            "positive_label": None if config.positive_label is None else canon(config.positive_label),
            "unit": unit.name, "seed": unit.seed, "precision": unit.precision,
            "init": "scratch" if unit.pretrained is None else "pretrained",
            "pretrained_from": None if unit.pretrained is None else {
                "cell": unit.pretrained.cell, "checkpoint": str(unit.pretrained.checkpoint), "cell_hash":
                unit.pretrained.cell_hash},
            "limit": options.limit, "protocol_hash": protocol.hash,
            "task_hash": task_hash(unit, task, protocol, options), "git_revision": run_info.get("git_revision")}
    if task.skipped is not None:
        result = {**base, "status": "skipped", "reason": task.skipped}
    else:
        base["data"] = task.data.info()
        try:
            result = {**base, "status": "ok", **run_task(unit, task, protocol, registry, folder, device, options,
                                                                checks)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one task failing must not stop the others
            message = str(exc) if isinstance(exc, CellFailed) else f"{type(exc).__name__}: {exc}"
            tb = out / "failures" / f"{unit.name}.{config.name}.traceback.txt"
            write_text(tb, traceback.format_exc())
            log.error("task %s of %s failed: %s", config.name, unit.name, message)
            result = {**base, "status": "failed", "error": message, "traceback_file": str(tb.relative_to(out))}
        if result["status"] == "ok" and not _any_ok(result):
            modes = [result.get("finetune", {}), *result.get("prompt", {}).values()]
            reasons = "; ".join(m["reason"] for m in modes if m and m.get("reason"))
            if any(m.get("status") == "degenerate" for m in modes):  # kept whole: it says what was degenerate
                result = {**result, "status": "degenerate", "reason": reasons}
            else:
                result = {**base, "status": "skipped", "reason": reasons}
    result["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(folder / f"{config.name}.json", result)
    return result


def _any_ok(result: dict[str, Any]) -> bool:
    return result.get("finetune", {}).get("status") == "ok" or any(
        m.get("status") == "ok" for m in result.get("prompt", {}).values())


def finished_task(out: Path, unit: Unit, task: TaskInput, protocol: Protocol, options: RunOptions) -> dict | None:
    """A finished result of the same task hash (``--resume``), else None."""
    path = out / "downstream" / unit.name / f"{task.config.name}.json"
    if not path.exists():
        return None
    data, why = read_json_file(path)
    if why is not None:
        log.warning("%s is unreadable (%s); task %s of %s is run again", path, why, task.config.name, unit.name)
        return None
    ok = data.get("status") == "ok" and data.get("task_hash") == task_hash(unit, task, protocol, options)
    return data if ok else None


def run_unit(unit: Unit, tasks: list[TaskInput], protocol: Protocol, registry: Registry, out: Path,
             device: torch.device, options: RunOptions, run_info: dict[str, Any], resume: bool,
             progress: Callable[..., None] | None = None,
             checks: dict[Any, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    results = {}
    for task in tasks:
        done = finished_task(out, unit, task, protocol, options) if resume else None
        if progress:
            progress("task_start", unit=unit.name, task=task.config.name)
        results[task.config.name] = done or evaluate_task(unit, task, protocol, registry, out, device, options,
                                                          run_info, checks)
        if progress:
            progress("task_end", unit=unit.name, task=task.config.name, status=results[task.config.name]["status"]
                     + (" (resumed)" if done else ""))
    summary = downstream_summary(unit, results, {t.config.name: t.config for t in tasks}, registry, protocol,
                                 options)
    summary["run"] = run_info
    path = out / f"{unit.name}_downstream.json"
    write_json(path, summary)
    return path, summary


# --------------------------------------------------------------------------- the summary
def headline(result: dict[str, Any]) -> tuple[str, dict[str, float]] | None:
    """The task's reported metrics: fine-tuned if it ran, else the prompt mode with the most shots."""
    if result.get("finetune", {}).get("status") == "ok":
        return "fine-tuned", result["finetune"]["metrics"]
    modes = [(int(k.split("-")[0]), k, m) for k, m in result.get("prompt", {}).items() if m.get("status") == "ok"]
    if modes:
        _, name, mode = max(modes)
        return name, mode["metrics"]
    return None


def _members(registry: Registry, group: str, configs: dict[str, TaskConfig]) -> list[str]:
    names = [n for n in registry.names("task") if group in registry.get("task", n).groups]
    return list(dict.fromkeys(names + [n for n, c in configs.items() if group in c.groups]))


def _config(registry: Registry, name: str, configs: dict[str, TaskConfig]) -> TaskConfig:
    return configs[name] if name in configs else registry.get("task", name).spec


def downstream_summary(unit: Unit, results: dict[str, dict[str, Any]], configs: dict[str, TaskConfig],
                       registry: Registry, protocol: Protocol, options: RunOptions) -> dict[str, Any]:
    """``{model}_downstream.json``: per benchmark, per task, and the benchmarks' averages."""
    summary: dict[str, Any] = {
        "model_name": unit.model, "unit": unit.name, "seed": unit.seed, "precision": unit.precision,
        "init": "scratch" if unit.pretrained is None else "pretrained",
        "pretrained_from": None if unit.pretrained is None else unit.pretrained.cell,
        "limit": options.limit, "dev_holdout": options.dev_holdout, "skip_bad_rows": options.skip_bad_rows,
        "protocol": protocol.to_dict(), "protocol_hash": protocol.hash,
    }
    placed: set[str] = set()
    for group in LEADERBOARDS:
        members = _members(registry, group, configs)
        section = {n: results[n] for n in members if n in results}
        if not section:
            continue
        scores: dict[str, dict[str, float]] = {}
        entry: dict[str, Any] = {}
        for name, res in section.items():
            head = headline(res)
            if head is not None:
                scores[name] = head[1]
                entry[name] = {**head[1], "score": task_score(head[1]), "mode": head[0]}
        merge: dict[str, list[str]] = {}
        for n in members:
            lb = _config(registry, n, configs).leaderboard_task
            if lb:
                merge.setdefault(lb, []).append(n)
        summary[group] = {**entry, **benchmark_average(scores, members, merge),
                          "modes": sorted({e["mode"] for e in entry.values()})}
        placed.update(section)
    if "squad" in results:
        head = headline(results["squad"])
        if head is not None:
            res = results["squad"]
            summary["squad"] = {"em": head[1]["em"], "f1": head[1]["f1"],
                                "dataset_size": res["finetune"]["examples"]["eval"], "mode": head[0]}
        placed.add("squad")
    mmlu = [n for n in _members(registry, "mmlu", configs) if n in results]
    if mmlu:
        summary["mmlu"] = mmlu_summary({n: results[n] for n in mmlu}, {n: _config(registry, n, configs) for n in mmlu})
        placed.update(mmlu)
    other = {}
    for name, res in results.items():
        head = headline(res)
        if name not in placed and head is not None:
            other[name] = {**head[1], "mode": head[0]}
    if other:
        summary["other"] = other
    summary["skipped"] = {n: r["reason"] for n, r in results.items() if r["status"] == "skipped"}
    summary["degenerate"] = {n: {mode: m["reason"] for mode, m in r.get("prompt", {}).items()
                                 if m.get("status") == "degenerate"}
                             for n, r in results.items() if any(m.get("status") == "degenerate"
                                                                for m in r.get("prompt", {}).values())}
    summary["failed"] = {n: r["error"] for n, r in results.items() if r["status"] == "failed"}
    summary["task_results"] = {n: f"downstream/{unit.name}/{n}.json" for n in results}
    return summary


def mmlu_summary(results: dict[str, dict[str, Any]], configs: dict[str, TaskConfig]) -> dict[str, Any]:
    """Per subject, per category and overall: micro (weighted by questions, as lm-evaluation-harness) and macro."""
    modes: dict[str, dict[str, tuple[float, int]]] = {}
    for name, res in results.items():
        candidates = dict(res.get("prompt", {}))
        if res.get("finetune"):
            candidates["fine-tuned"] = {**res["finetune"], "examples": res["finetune"].get("examples", {}).get("eval")}
        for mode, m in candidates.items():
            if m.get("status") == "ok":
                modes.setdefault(mode, {})[name] = (m["metrics"]["accuracy"], m["examples"])

    def section(scores: dict[str, tuple[float, int]]) -> dict[str, Any]:
        n = sum(c for _, c in scores.values())
        cats: dict[str, list[tuple[float, int]]] = {}
        for name, value in scores.items():
            cats.setdefault(configs[name].category or "uncategorised", []).append(value)
        return {
            "accuracy": sum(a * c for a, c in scores.values()) / n,
            "macro_accuracy": sum(a for a, _ in scores.values()) / len(scores),
            "subject_scores": {name.removeprefix("mmlu_"): a for name, (a, _) in sorted(scores.items())},
            "category_scores": {c: sum(a * k for a, k in v) / sum(k for _, k in v) for c, v in sorted(cats.items())},
            "category_macro_scores": {c: sum(a for a, _ in v) / len(v) for c, v in sorted(cats.items())},
            "num_subjects_evaluated": len(scores), "num_questions": n,
            "complete": len(scores) == len(results),  # every MMLU task of the run has a score in this mode
        }

    out: dict[str, Any] = {"modes": {m: section(s) for m, s in modes.items()}}
    ranked = sorted((m for m in modes if m != "fine-tuned"), key=lambda m: int(m.split("-")[0]))
    main = "fine-tuned" if "fine-tuned" in modes else (ranked[-1] if ranked else None)
    if main is not None:
        out = {**out["modes"][main], "mode": main, **out}
    else:
        out.update(accuracy=None, num_subjects_evaluated=0)
    out["subjects_missing"] = sorted(n.removeprefix("mmlu_") for n in results if not any(n in s for s in modes.values()))
    return out
