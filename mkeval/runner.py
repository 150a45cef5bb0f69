"""The runner: validate a request, expand it into cells, run each (resuming, isolating failures), write results.

Everything that can be checked is checked before the first cell trains, so bad input
leaves the output directory untouched.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .aggregate import multi_dataset_summary
from .downstream import Pretrained, RunOptions, TaskInput, Unit, run_unit
from .engine import Cell, CellPlan, evaluate_cell, finish_cell, git_revision, plan_hash, run_cell
from .errors import CellFailed, PluginError, UsageError
from .models import check_model_options
from .protocol import Protocol, config_positions, load_config
from .registry import Registry, get_registry
from .results import (
    SUMMARY_FILE,
    CellResult,
    CellStatus,
    ResultScan,
    remove_stale_temp_files,
    scan_results,
    write_json,
    write_text,
)
from .specs import DataRequest, LMData
from .taskdata import TaskSkipped, load_task_data
from .taskspec import TaskConfig, load_task_dir, specs_in
from .text import apply_split_map, parse_split_map
from .training import Progress

log = logging.getLogger(__name__)

DEFAULT_DATASETS = ("markov",)
DEFAULT_PRECISIONS = ("fp32",)


@dataclass
class RunResult:
    """What ``mkeval.run`` returns."""

    cells: list[CellStatus]
    results: list[CellResult]
    output_dir: Path | None
    protocol: Protocol
    dry_run: bool = False
    multi_dataset_files: list[Path] = field(default_factory=list)
    downstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit -> its _downstream.json content
    downstream_files: list[Path] = field(default_factory=list)
    tasks: list[TaskInput] = field(default_factory=list)

    @property
    def failed_tasks(self) -> list[tuple[str, str, str]]:
        """``(unit, task, error)`` for every downstream task that failed."""
        return [(u, t, e) for u, s in self.downstream.items() for t, e in s.get("failed", {}).items()]

    @property
    def failed(self) -> list[CellStatus]:
        return [c for c in self.cells if c.status == "failed"]


def split_names(value: str | Sequence[str] | None, option: str) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; empty items are an error naming the option."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(i).strip() for i in items]
    if not names or any(not n for n in names):
        raise UsageError(f"{option}: empty name in {value!r}")
    return list(dict.fromkeys(names))


def parse_ints(value: str | int | Sequence[int] | None, option: str, minimum: int = 1) -> list[int] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else list(value))
    out = []
    for item in items:
        try:
            number = int(str(item).strip())
        except ValueError:
            raise UsageError(f"{option}: {str(item).strip()!r} is not an integer") from None
        if number < minimum:
            raise UsageError(f"{option}: {number} must be >= {minimum}")
        out.append(number)
    if not out:
        raise UsageError(f"{option}: no value given")
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class PrecisionRole:
    """A precision of the run and the precision its checkpoint is trained at.

    Floating-point precisions (``fp32``, ``bf16``, ``fp16``: no ``quantize``) train, each its own
    cell (``trained_at == name``). Post-training precisions (``int8``, ``int4``, plugins) and
    ``--evaluate-at`` precisions evaluate the first training precision's checkpoint.
    """

    name: str
    trained_at: str
    role: str  # "trained" | "post-training" | "evaluation-only"

    @property
    def trains(self) -> bool:
        return self.role == "trained"


def _precision_names(registry: Registry, precisions: list[str] | None, bits: list[int] | None) -> list[str]:
    names = list(precisions or [])
    for b in bits or []:
        matches = [n for n in registry.names("precision") if registry.get("precision", n).bits == b]
        preferred = {32: "fp32", 16: "fp16", 8: "int8", 4: "int4"}.get(b)
        if preferred in matches:
            names.append(preferred)
        elif len(matches) == 1:
            names.append(matches[0])
        else:
            accepted = sorted({registry.get("precision", n).bits for n in registry.names("precision")})
            raise UsageError(f"--bits: no precision with {b} bits; accepted values: {', '.join(map(str, accepted))}")
    names = list(dict.fromkeys(names))
    for n in names:
        registry.get("precision", n, option="--precisions")
    return names


def resolve_precisions(registry: Registry, precisions: list[str] | None, bits: list[int] | None,
                       evaluate_at: list[str] | None = None) -> list[PrecisionRole]:
    """The run's precisions from ``--precisions``/``--bits`` (32 -> fp32, 16 -> fp16, 8 -> int8, 4 -> int4,
    or a plugin's bits) and ``--evaluate-at``, training ones first."""
    names = _precision_names(registry, precisions, bits)
    trains = [n for n in names if registry.get("precision", n).quantize is None] or list(DEFAULT_PRECISIONS)
    post = [n for n in names if registry.get("precision", n).quantize is not None]
    roles = [PrecisionRole(n, n, "trained") for n in trains] + [PrecisionRole(n, trains[0], "post-training")
                                                              for n in post]
    for n in evaluate_at or []:
        spec = registry.get("precision", n, option="--evaluate-at")
        if spec.quantize is not None:
            raise UsageError(f"--evaluate-at: {n!r} is a post-training precision; list it in --precisions (it "
                             "evaluates the trained checkpoint anyway)")
        if n == trains[0]:
            raise UsageError(f"--evaluate-at: {n!r} is the precision the checkpoint is trained at; nothing to add")
        roles.append(PrecisionRole(n, trains[0], "evaluation-only"))
    return roles


def run(
    models: str | Sequence[str] | None = None,
    datasets: str | Sequence[str] | None = None,
    tasks: str | Sequence[str] | None = None,
    precisions: str | Sequence[str] | None = None,
    bits: str | Sequence[int] | None = None,
    seq_len: str | Sequence[int] | int | None = None,
    seeds: str | Sequence[int] | int | None = None,
    train_tokens: int | None = None,
    output_dir: str | Path = "results",
    data_dir: str | Path | None = None,
    config: str | Path | None = None,
    resume: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    device: str | None = None,
    protocol: Protocol | None = None,
    model_options: dict[str, dict[str, Any]] | None = None,
    match_params: str | None = None,
    split_map: str | dict[str, str] | None = None,
    dataset_options: dict[str, dict[str, Any]] | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    skip_bad_rows: bool | None = None,
    dev_holdout: bool | None = None,
    fewshot: str | Sequence[int] | int | None = None,
    allow_test_contamination: bool | None = None,
    evaluate_at: str | Sequence[str] | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    **protocol_fields: Any,
) -> RunResult:
    """Run the matrix models x datasets x seq_lens x precisions x seeds; what ``mkeval run`` does.

    ``protocol`` (or ``config``, a YAML file) sets the protocol; ``seq_len``, ``seeds``,
    ``train_tokens`` and any other protocol field given as a keyword override it.
    ``match_params`` names a model of the run whose non-embedding parameter count every
    other model is sized to (through its plugin's ``size_knob``). ``split_map`` reads a role
    from another split of text datasets (``"train=valid"``), recorded in every result.
    ``model_options`` / ``dataset_options`` map a model or dataset name to its build or load
    options (e.g. ``{"markov": {"vocab": 64}}``).

    ``tasks`` (names or groups such as ``glue``) adds downstream evaluation: each model is
    fine-tuned from its pretraining cell when ``datasets`` is given, else from scratch.
    ``include_path`` adds folders of task specs; ``skip_bad_rows`` counts and leaves out bad
    data rows instead of failing; ``dev_holdout`` fine-tunes a task without a train split on a
    seeded half of its eval split (and evaluates on the other half); ``fewshot`` sets the shot
    counts of prompt-scored tasks.
    """
    registry = registry or get_registry()
    file_protocol: dict[str, Any] = {}
    file_run: dict[str, Any] = {}
    if config is not None:
        file_protocol, file_run = load_config(config)
    models = models if models is not None else file_run.get("models")
    datasets = datasets if datasets is not None else file_run.get("datasets")
    tasks = tasks if tasks is not None else file_run.get("tasks")
    precisions = precisions if precisions is not None else file_run.get("precisions")
    data_dir = data_dir if data_dir is not None else file_run.get("data_dir")
    limit = limit if limit is not None else file_run.get("limit")
    if "output_dir" in file_run and str(output_dir) == "results":
        output_dir = file_run["output_dir"]

    base = protocol.to_dict() if protocol is not None else Protocol().to_dict()
    overrides = dict(file_protocol)
    if seq_len is not None:
        overrides["seq_lens"] = tuple(parse_ints(seq_len, "--seq-len"))
    if seeds is not None:
        overrides["seeds"] = tuple(parse_ints(seeds, "--seeds", minimum=0))
    if fewshot is not None:
        overrides["fewshot"] = tuple(parse_ints(fewshot, "--fewshot", minimum=0))
    if train_tokens is not None:
        overrides["train_tokens"] = train_tokens
    overrides.update({k: v for k, v in protocol_fields.items() if v is not None})
    protocol = Protocol.from_dict({**base, **overrides}, source="protocol")

    model_names = split_names(models, "--models") or registry.names("model")
    if not model_names:
        raise UsageError("no model plugins are installed; see `mkeval list`")
    pretrain = datasets is not None
    dataset_names = split_names(datasets, "--datasets") or list(DEFAULT_DATASETS)
    precision_names = resolve_precisions(
        registry, split_names(precisions, "--precisions"), parse_ints(bits, "--bits") if bits is not None else None,
        split_names(evaluate_at if evaluate_at is not None else file_run.get("evaluate_at"), "--evaluate-at"))
    for name in model_names:
        registry.get("model", name, option="--models")
    for name in dataset_names:
        registry.get("dataset", name, option="--datasets")
    task_names = split_names(tasks, "--tasks")
    include = include_path if include_path is not None else file_run.get("include_path")
    task_configs: list[TaskConfig] = []
    if task_names:
        task_configs = resolve_tasks(registry, task_names, included_tasks(include))
        if pretrain:
            synthetic = [d for d in dataset_names if registry.get("dataset", d).synthetic]
            if synthetic:
                raise UsageError(f"--tasks: dataset(s) {', '.join(synthetic)} are synthetic and have no text "
                                 "tokenizer to read task text; pretrain on a text dataset (e.g. --datasets wikitext-2) "
                                 "or leave out --datasets to fine-tune from scratch")
    elif include is not None:
        raise UsageError("--include-path: given without --tasks")
    skip_bad_rows = bool(skip_bad_rows if skip_bad_rows is not None else file_run.get("skip_bad_rows", False))
    dev_holdout = bool(dev_holdout if dev_holdout is not None else file_run.get("dev_holdout", False))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise UsageError(f"--limit: must be a positive integer, got {limit!r}")
    options = model_options if model_options is not None else file_run.get("model_options", {})
    positions = config_positions(config) if config is not None and model_options is None else {}
    for name, opts in options.items():
        spec = registry.get("model", name, option=positions.get(f"model_options.{name}", "model_options"))
        unknown = [k for k in opts if spec.options is not None and k not in spec.options] if isinstance(opts, dict) else []
        where = positions.get(f"model_options.{name}" + (f".{unknown[0]}" if unknown else ""), "model_options")
        check_model_options(name, protocol.model_size or spec.default_size, opts, where, registry)
    dev = resolve_device(device)
    for role in precision_names:
        spec = registry.get("precision", role.name)
        reason = spec.unsupported(dev) if spec.unsupported else None
        if reason:
            raise UsageError(f"precision {role.name!r} cannot run on {dev}: {reason}")
    for name in model_names:
        spec = registry.get("model", name)
        size = protocol.model_size or spec.default_size
        if spec.sizes and size is not None and size not in spec.sizes:
            raise UsageError(f"model_size: model {name!r} has no size {size!r}; its sizes are {', '.join(spec.sizes)}")
        if protocol.grad_checkpointing and not _supports_checkpointing(registry, name, size, options.get(name, {})):
            raise UsageError(f"grad_checkpointing: model {name!r} has no set_gradient_checkpointing(enabled) method; "
                             "run it without gradient checkpointing or add the method to its plugin")
        too_long = [n for n in protocol.seq_lens if spec.max_seq_len is not None and n > spec.max_seq_len]
        if too_long:
            raise UsageError(f"--seq-len: model {name!r} supports at most {spec.max_seq_len} tokens, asked for {too_long}")
    sizing = plan_sizing(registry, model_names, options,
                         match_params if match_params is not None else file_run.get("match_params"))
    allow_test = bool(allow_test_contamination if allow_test_contamination is not None
                      else file_run.get("allow_test_contamination", False))
    splits = parse_split_map(split_map if split_map is not None else file_run.get("split_map"), allow_test)
    data_options = dataset_options if dataset_options is not None else file_run.get("dataset_options", {})
    for name in data_options:
        registry.get("dataset", name, option="dataset_options")
    data_path = Path(data_dir).resolve() if data_dir is not None else None
    if data_path is not None and not data_path.is_dir():
        raise UsageError(f"--data-dir: {data_dir} is not a directory")

    plans = []
    if pretrain or not task_configs:
        plans = plan_cells(registry, protocol, model_names, dataset_names, precision_names, options, data_path,
                           limit, sizing, splits, data_options)
    out = Path(output_dir)
    scan = scan_results(out) if resume and out.is_dir() else ResultScan()
    done = scan.finished
    run_options = RunOptions(limit=limit, dev_holdout=dev_holdout, skip_bad_rows=skip_bad_rows)
    task_inputs = load_tasks(task_configs, data_path, run_options, protocol.data_seed)
    if dry_run:
        statuses = [CellStatus(p.name, p.cell_hash, "resumed" if p.cell_hash in done else "planned",
                               config=p.identity) for p in plans]
        return RunResult(statuses, [], None, protocol, dry_run=True, tasks=task_inputs)
    check_writable(out)
    data = load_data([p for p in plans if p.cell_hash not in done or task_inputs], registry, protocol, data_path)
    scratch = [] if plans else scratch_units(registry, protocol, model_names, precision_names, options, sizing)
    return execute(plans, registry, protocol, out, dev, data, done, resume, progress, task_inputs, scratch,
                   run_options, scan.unreadable)


@dataclass(frozen=True)
class Sizing:
    """How each model of the run is sized: ``reference[model]`` is the model whose non-embedding
    parameter count it is matched to (None: its own size), ``unmatched[model]`` why it is not."""

    reference: dict[str, str | None]
    unmatched: dict[str, str]
    mode: str  # "explicit" (--match-params REF) | "default" (the first model) | "off"


def plan_sizing(registry: Registry, models: list[str], options: dict[str, dict[str, Any]],
                match: str | None) -> Sizing:
    """``--match-params``: REF, ``none``, or (default, with several models) the first model.

    Every other model is sized through its plugin's ``size_knob`` to REF's non-embedding
    parameter count (within 3%). Asked for explicitly, a model that cannot be sized is an error;
    by default it keeps its own size and its results are marked as not size-matched.
    """
    if match is not None and str(match).lower() == "none":
        off = {m: "size matching is off (--match-params none)" for m in models} if len(models) > 1 else {}
        return Sizing({m: None for m in models}, off, "off")
    mode = "explicit" if match is not None else "default"
    if match is None:
        if len(models) < 2:
            return Sizing({m: None for m in models}, {}, "off")
        match = models[0]
    if match not in models:
        raise UsageError(f"--match-params: {match!r} is not among the run's models ({', '.join(models)}); "
                         "or 'none' to keep each model's own size")
    reference: dict[str, str | None] = {match: None}
    unmatched: dict[str, str] = {}
    for name in models:
        if name == match:
            continue
        spec = registry.get("model", name)
        why = None
        if spec.size_knob is None:
            why = f"model {name!r} declares no size_knob, so it cannot be sized to {match!r}"
        elif spec.size_knob in options.get(name, {}):
            why = f"model {name!r} sets its size knob {spec.size_knob!r} in its options"
        if why is not None and mode == "explicit":
            raise UsageError(f"--match-params: {why}; drop that or use --match-params none")
        reference[name] = None if why else match
        if why:
            unmatched[name] = why
    return Sizing(reference, unmatched, mode)


def _supports_checkpointing(registry: Registry, name: str, size: str | None, options: dict[str, Any]) -> bool:
    """Whether the model has ``set_gradient_checkpointing`` (built on the meta device: nothing allocated)."""
    from .models import build_model

    try:
        with torch.device("meta"):
            model = build_model(name, 8, 16, size=size, registry=registry, **options)
    except Exception:  # a build that needs real memory: the cell itself will say
        return True
    return callable(getattr(model, "set_gradient_checkpointing", None))


def included_tasks(include: str | Path | Sequence[str | Path] | None) -> dict[str, TaskConfig]:
    """Task specs from ``--include-path`` folders (comma-separated or a list)."""
    if include is None:
        return {}
    paths = str(include).split(",") if isinstance(include, (str, Path)) else [str(p) for p in include]
    configs = [c for p in paths if p.strip() for c in load_task_dir(p.strip())]
    return specs_in(configs)


def load_tasks(configs: list[TaskConfig], data_dir: Path | None, options: RunOptions, seed: int) -> list[TaskInput]:
    """Every task's data, before anything is written; bad rows are bad input (exit 2), absent files a skip."""
    inputs = []
    for config in configs:
        try:
            inputs.append(TaskInput(config, load_task_data(config, data_dir, options.skip_bad_rows, options.limit,
                                                           options.dev_holdout, seed)))
        except TaskSkipped as exc:
            inputs.append(TaskInput(config, skipped=str(exc)))
    if inputs and all(t.skipped for t in inputs):
        reasons = "; ".join(f"{t.config.name}: {t.skipped}" for t in inputs[:5])
        raise UsageError(f"--tasks: none of the {len(inputs)} task(s) can run here ({reasons}"
                         f"{'; ...' if len(inputs) > 5 else ''}); check --data-dir")
    return inputs


def scratch_units(registry: Registry, protocol: Protocol, models: list[str], precisions: list[PrecisionRole],
                  options: dict[str, dict[str, Any]], sizing: Sizing) -> list[Unit]:
    """Downstream units without pretraining: model x training precision x seed, in the matrix's order."""
    units = []
    trains = [r.name for r in precisions if r.trains]
    many_bits = len({registry.get("precision", p).bits for p in trains}) < len(trains)
    for seed in protocol.seeds:
        for precision in trains:
            for model in models:
                name = model
                if len(trains) > 1:
                    name += f"_bits{registry.get('precision', precision).bits}" + (f"_{precision}" if many_bits else "")
                if len(protocol.seeds) > 1:
                    name += f"_seed{seed}"
                size = protocol.model_size or registry.get("model", model).default_size
                ref = sizing.reference[model]
                units.append(Unit(name, model, precision, seed, size, options.get(model, {}), ref,
                                  (protocol.model_size or registry.get("model", ref).default_size) if ref else None,
                                  options.get(ref, {}) if ref else {}, unmatched=sizing.unmatched.get(model)))
    return units


def load_data(plans: list[CellPlan], registry: Registry, protocol: Protocol,
              data_dir: Path | None) -> dict[tuple[str, int], LMData | Exception]:
    """Every (dataset, seq_len) of the run, loaded once before any cell runs.

    A dataset that cannot be loaded fails its own cells (recorded, the others go on); when no
    dataset of the run can be loaded it is bad input, reported before anything is written.
    """
    loaded: dict[tuple[str, int], LMData | Exception] = {}
    for plan in plans:
        key = (plan.cell.dataset, plan.cell.seq_len)
        if key in loaded:
            continue
        try:
            spec = registry.get("dataset", plan.cell.dataset)
            data = spec.load(data_request(protocol, plan.cell.seq_len, data_dir, plan.split_map,
                                          plan.dataset_options))
            loaded[key] = data if spec.maps_splits else apply_split_map(data, plan.split_map)
        except Exception as exc:  # recorded for the dataset's cells; the matrix goes on
            loaded[key] = exc
    failures = [v for v in loaded.values() if isinstance(v, Exception)]
    if failures and len(failures) == len(loaded) and all(isinstance(f, UsageError) for f in failures):
        raise failures[0]
    return loaded


def data_request(protocol: Protocol, seq_len: int, data_dir: Path | None, split_map: dict[str, str],
                 options: dict[str, Any] | None = None) -> DataRequest:
    """What every model of a run asks a dataset for: the same data, tokenizer and budgets."""
    evals = (protocol.eval_tokens, protocol.test_tokens)
    return DataRequest(seq_len=seq_len, train_tokens=protocol.train_tokens, seed=protocol.data_seed,
                       data_dir=data_dir, tokenizer=protocol.tokenizer, split_map=split_map,
                       eval_tokens=0 if 0 in evals else max(evals), options=options or {})


def resolve_tasks(registry: Registry, names: Iterable[str],
                  extra: dict[str, TaskConfig] | None = None) -> list[TaskConfig]:
    """Task specs by name, with group names (e.g. ``glue``, ``mmlu_stem``) expanded to their tasks."""
    extra = extra or {}
    clash = [n for n in extra if n in registry.entries["task"]]
    if clash:
        spec = registry.get("task", clash[0]).spec
        raise UsageError(f"--include-path: task {clash[0]!r} in {extra[clash[0]].source_file} is already defined "
                         f"by {getattr(spec, 'source_file', None) or 'an installed plugin'}; rename it")
    known = {n: registry.get("task", n).spec for n in registry.names("task")}
    known.update(extra)
    out: list[TaskConfig] = []
    for name in names:
        members = [c for c in known.values() if name in getattr(c, "groups", ())]
        if members:
            out.extend(members)
        elif name in known:
            out.append(known[name])
        else:
            import difflib

            groups = sorted({g for c in known.values() for g in getattr(c, "groups", ())})
            close = difflib.get_close_matches(name, list(known) + groups, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UsageError(f"--tasks: unknown task or group {name!r}{hint} (groups: {', '.join(groups)}; "
                             "`mkeval list` shows every task)")
    for c in out:
        if not isinstance(c, TaskConfig):
            entry = registry.entry("task", getattr(c, "name", "?")) if getattr(c, "name", None) else None
            who = f"plugin {entry.plugin!r} ({entry.distribution})" if entry else "a plugin"
            raise PluginError(f"{who} registered a task whose spec is not a mkeval.TaskConfig; build task specs "
                              "with mkeval.task_specs(folder)")
    return list({c.name: c for c in out}.values())


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


def plan_cells(
    registry: Registry,
    protocol: Protocol,
    models: list[str],
    datasets: list[str],
    precisions: list[PrecisionRole],
    model_options: dict[str, dict[str, Any]],
    data_dir: Path | None,
    limit: int | None,
    sizing: Sizing | None = None,
    split_map: dict[str, str] | None = None,
    dataset_options: dict[str, dict[str, Any]] | None = None,
) -> list[CellPlan]:
    """The matrix, in a fixed order: dataset, seq_len, seed, precision, model (models adjacent for comparison).

    A training precision's cell trains; a post-training or ``--evaluate-at`` precision's cell
    evaluates the checkpoint of the same model, dataset, length and seed trained at the first
    training precision.
    """
    shared_bits: dict[int, int] = {}
    for role in precisions:
        if role.role != "evaluation-only":
            b = registry.get("precision", role.name).bits
            shared_bits[b] = shared_bits.get(b, 0) + 1

    def size_of(model: str) -> str | None:
        return protocol.model_size or registry.get("model", model).default_size

    def name_of(model: str, dataset: str, seq_len: int, seed: int, role: PrecisionRole) -> str:
        bits = registry.get("precision", role.name).bits
        name = f"{model}_{dataset}_seq{seq_len}_bits{bits}"
        if role.role == "evaluation-only":
            name += f"_{role.name}_from_{role.trained_at}"
        elif shared_bits[bits] > 1:
            name += f"_{role.name}"
        return name + (f"_seed{seed}" if len(protocol.seeds) > 1 else "")

    plans = []
    for dataset in datasets:
        for seq_len in protocol.seq_lens:
            for seed in protocol.seeds:
                trained: dict[tuple[str, str], tuple[str, str]] = {}
                for role in precisions:
                    for model in models:
                        cell = Cell(model, dataset, seq_len, role.name, seed)
                        ref = sizing.reference.get(model) if sizing else None
                        source = None if role.trains else trained[(model, role.trained_at)]
                        plan = CellPlan(cell, name_of(model, dataset, seq_len, seed, role), "", size_of(model),
                                        model_options.get(model, {}), str(data_dir) if data_dir else None, limit,
                                        ref, size_of(ref) if ref else None, dict(split_map or {}),
                                        model_options.get(ref, {}) if ref else {},
                                        (dataset_options or {}).get(dataset, {}),
                                        source[0] if source else None, source[1] if source else None,
                                        _quantizer(registry, role.name), role.role,
                                        sizing.unmatched.get(model) if sizing else None)
                        plan = dataclasses.replace(plan, cell_hash=plan_hash(protocol, cell, plan.identity))
                        if role.trains:
                            trained[(model, role.name)] = (plan.name, plan.cell_hash)
                        plans.append(plan)
    return plans


def _quantizer(registry: Registry, precision: str) -> str | None:
    """What a post-training precision's numbers depend on besides the checkpoint (for the cell hash)."""
    spec = registry.get("precision", precision)
    if spec.quantize is None:
        return None
    entry = registry.entry("precision", precision)
    try:
        import importlib.metadata

        version = importlib.metadata.version("torchao")
    except Exception:  # noqa: BLE001 - a plugin may quantize without torchao
        version = "unknown"
    return f"{entry.distribution}:{spec.description}; torchao {version}"


def check_writable(out: Path) -> None:
    """Fail before any training if results cannot be written to ``out``."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir: {out} exists and is not a directory")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--output-dir: cannot write to {out} ({probe_dir} is not writable)")


def execute(
    plans: list[CellPlan],
    registry: Registry,
    protocol: Protocol,
    out: Path,
    device: torch.device,
    data: dict[tuple[str, int], LMData | Exception],
    done: dict[str, tuple[Path, dict[str, Any]]],
    resume: bool,
    progress: Progress | None,
    tasks: list[TaskInput] | None = None,
    scratch: list[Unit] | None = None,
    options: RunOptions | None = None,
    unreadable: dict[Path, str] | None = None,
) -> RunResult:
    """Run the cells not in ``done`` (finished results, by cell hash), then the downstream units.

    ``unreadable`` lists result files that could not be read; a cell whose file is among them is
    rerun, and the run says so.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    checks: dict[Any, Any] = {}  # runtime contract checks, once per model configuration
    run_info = {"started": _now(), "git_revision": git_revision(), "resume": resume,
                "cells": len(plans), "protocol_hash": protocol.hash}
    statuses: list[CellStatus] = []
    results: list[CellResult] = []
    done_plans: list[CellPlan] = []  # the plan of each entry of results
    dataset_failures: dict[str, dict[str, str]] = {}
    if progress:
        progress("plan", cells=[p.name for p in plans])
    for index, plan in enumerate(plans):
        cell = plan.cell
        if plan.cell_hash in done:
            path, finished = done[plan.cell_hash]
            statuses.append(CellStatus(plan.name, plan.cell_hash, "resumed", path.name, config=plan.identity))
            results.append(CellResult.from_json(finished))
            done_plans.append(plan)
            if progress:
                progress("cell_end", index=index, name=plan.name, status="resumed")
            continue
        note = None
        bad = (unreadable or {}).get(out / f"{plan.name}.json")
        if bad is not None:
            note = f"its result file {plan.name}.json was unreadable ({bad}); the cell was rerun"
            log.warning("%s: %s", plan.name, note)
        if progress:
            progress("cell_start", index=index, name=plan.name,
                     steps=protocol.steps(cell.seq_len) if plan.evaluates is None else 0)
        try:
            cell_data = data[(cell.dataset, cell.seq_len)]
            if isinstance(cell_data, Exception):
                raise cell_data
            if plan.evaluates is None:
                result = run_cell(plan, cell_data, protocol, registry, out, device, run_info, progress, checks,
                                  resume)
            else:
                base = next((r for r, p in zip(results, done_plans) if p.name == plan.evaluates), None)
                if base is None:
                    raise CellFailed(f"its training cell {plan.evaluates} did not finish, so there is no "
                                     "checkpoint to evaluate at this precision")
                result = evaluate_cell(plan, base, cell_data, protocol, registry, out, device, run_info)
            path = out / f"{plan.name}.json"
            write_json(path, result.to_json())
            finish_cell(out, result)
            statuses.append(CellStatus(plan.name, plan.cell_hash, "ok", path.name, config=plan.identity, note=note))
            results.append(result)
            done_plans.append(plan)
            status = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one failing cell must not stop the matrix
            message = str(exc) if isinstance(exc, (CellFailed, UsageError)) else f"{type(exc).__name__}: {exc}"
            tb_path = out / "failures" / f"{plan.name}.traceback.txt"
            write_text(tb_path, traceback.format_exc())
            log.error("cell %s failed: %s", plan.name, message)
            statuses.append(CellStatus(plan.name, plan.cell_hash, "failed", error=message,
                                       traceback_file=str(tb_path.relative_to(out)), config=plan.identity,
                                       note=note))
            dataset_failures.setdefault(cell.model, {})[cell.dataset] = message
            status = "failed"
        if progress:
            progress("cell_end", index=index, name=plan.name, status=status)
        write_summary(out, protocol, run_info, statuses)

    multi_files = []
    dataset_names = list(dict.fromkeys(p.cell.dataset for p in plans))
    if len(dataset_names) > 1:
        for model in dict.fromkeys(p.cell.model for p in plans):
            mine = [r for r in results if r.model_name == model]
            path = out / f"{model}_multi_dataset.json"
            failed = [c.config["cell"] for c in statuses if c.status == "failed" and c.config["cell"]["model"] == model]
            write_json(path, multi_dataset_summary(model, mine, dataset_failures.get(model, {}), failed))
            multi_files.append(path)
    downstream: dict[str, dict[str, Any]] = {}
    downstream_files: list[Path] = []
    if tasks:
        units = list(scratch or [])
        by_hash = {r.cell_hash: r for r in results}
        trained = [p for p in plans if p.evaluates is None]  # post-training precisions get no downstream run
        per_model = {p.cell.model: sum(1 for q in trained if q.cell.model == p.cell.model) for p in trained}
        for plan in trained:
            result = by_hash.get(plan.cell_hash)
            name = plan.cell.model if per_model[plan.cell.model] == 1 else plan.name
            cell_data = data.get((plan.cell.dataset, plan.cell.seq_len))
            if result is None or not isinstance(cell_data, LMData) or cell_data.tokenizer is None:
                why = "its pretraining cell failed" if result is None else "its dataset has no text tokenizer"
                downstream[name] = {"model_name": plan.cell.model, "unit": name, "skipped_unit": why}
                continue
            units.append(Unit(name, plan.cell.model, plan.cell.precision, plan.cell.seed, plan.model_size,
                              pretrained=Pretrained(plan.name, out / result.checkpoint, cell_data.tokenizer,
                                                    cell_data.vocab_size, plan.cell.seq_len,
                                                    result.config["model"]["options"], plan.cell_hash)))
        if progress:
            progress("downstream_plan", units=[u.name for u in units], tasks=[t.config.name for t in tasks])
        for unit in units:
            path, summary = run_unit(unit, tasks, protocol, registry, out, device, options or RunOptions(),
                                     run_info, resume, progress, checks)
            downstream[unit.name] = summary
            downstream_files.append(path)
            write_summary(out, protocol, run_info, statuses, downstream)
    run_info["finished"] = _now()
    write_summary(out, protocol, run_info, statuses, downstream)
    return RunResult(statuses, results, out, protocol, multi_dataset_files=multi_files, downstream=downstream,
                     downstream_files=downstream_files, tasks=list(tasks or []))


def write_summary(out: Path, protocol: Protocol, run_info: dict[str, Any], statuses: list[CellStatus],
                  downstream: dict[str, dict[str, Any]] | None = None) -> None:
    counts = {s: sum(1 for c in statuses if c.status == s) for s in ("ok", "resumed", "failed")}
    summary = {
        "run": run_info,
        "protocol": protocol.to_dict(),
        "protocol_hash": protocol.hash,
        "counts": counts,
        "cells": [c.__dict__ for c in statuses],
    }
    if downstream:
        summary["downstream"] = {
            unit: {"skipped_unit": s["skipped_unit"]} if "skipped_unit" in s else {
                "file": f"{unit}_downstream.json", "skipped": sorted(s.get("skipped", {})),
                "failed": sorted(s.get("failed", {}))}
            for unit, s in downstream.items()}
    write_json(out / SUMMARY_FILE, summary)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
