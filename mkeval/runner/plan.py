"""The plan of a run: typed jobs with explicit dependencies, their names and hashes.

- ``TrainCell``: trains and evaluates one language-modelling cell (model x dataset x seq_len x
  training precision x seed); writes ``{name}.json`` and ``checkpoints/{name}/``.
- ``PrecisionEval``: evaluates a ``TrainCell``'s checkpoint at a post-training (int8, int4) or
  ``--evaluate-at`` precision; needs that cell.
- ``TaskUnit``: one downstream task for one model unit (a model at one training precision and
  seed), from scratch or from a ``TrainCell``'s checkpoint (which it then needs); writes
  ``downstream/{unit}/{task}.json`` and its predictions.

A job's hash covers everything its numbers depend on, so a result file holding the same hash
is that job's result (``--resume``, shards, Ray workers). Jobs come in a fixed order, each after
what it needs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

from ..data.taskspec import TaskConfig, load_task_dir, specs_in
from ..engine.lm import Cell, CellPlan
from ..engine.tasks import Unit, config_hash
from ..errors import PluginError, UsageError, did_you_mean
from ..protocol import Protocol, stable_hash
from ..registry import Registry

DEFAULT_PRECISIONS = ("fp32",)


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """A unit of work: ``name`` (unique in the plan), ``job_hash`` and the names of the jobs it ``needs``."""

    name: str
    job_hash: str
    needs: tuple[str, ...] = ()
    kind: ClassVar[str] = "job"

    def result_path(self, out: Path) -> Path:
        raise NotImplementedError


@dataclass(frozen=True)
class TrainCell(Job):
    plan: CellPlan = None  # type: ignore[assignment]
    kind: ClassVar[str] = "train"

    def result_path(self, out: Path) -> Path:
        return out / f"{self.name}.json"


@dataclass(frozen=True)
class PrecisionEval(Job):
    plan: CellPlan = None  # type: ignore[assignment]
    kind: ClassVar[str] = "precision_eval"

    def result_path(self, out: Path) -> Path:
        return out / f"{self.name}.json"


@dataclass(frozen=True)
class TaskUnit(Job):
    unit: Unit = None  # type: ignore[assignment]
    task: TaskConfig = None  # type: ignore[assignment]
    data_fingerprint: str | None = None
    skipped: str | None = None  # the task cannot run here (files absent): recorded, no model work
    kind: ClassVar[str] = "task"

    def result_path(self, out: Path) -> Path:
        return out / "downstream" / self.unit.name / f"{self.task.name}.json"


@dataclass
class Plan:
    """Every job of a run, in order; what the summaries group."""

    jobs: list[Job] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    units: list[Unit] = field(default_factory=list)

    def by_name(self) -> dict[str, Job]:
        return {j.name: j for j in self.jobs}

    def of(self, kind: type) -> list[Any]:
        return [j for j in self.jobs if isinstance(j, kind)]


# --------------------------------------------------------------------------- precisions and sizes
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


def precision_names(registry: Registry, precisions: list[str] | None, bits: list[int] | None) -> list[str]:
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
    """The run's precisions from ``--precisions``/``--bits`` and ``--evaluate-at``, training ones first."""
    names = precision_names(registry, precisions, bits)
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


# --------------------------------------------------------------------------- tasks
def included_tasks(include: str | Path | Iterable[str | Path] | None) -> dict[str, TaskConfig]:
    """Task specs from ``--include-path`` folders (a list, or comma-separated)."""
    if include is None:
        return {}
    paths = str(include).split(",") if isinstance(include, (str, Path)) else [str(p) for p in include]
    return specs_in([c for p in paths if p.strip() for c in load_task_dir(p.strip())])


def resolve_tasks(registry: Registry, names: Iterable[str], extra: dict[str, TaskConfig] | None = None
                  ) -> list[TaskConfig]:
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
            groups = sorted({g for c in known.values() for g in getattr(c, "groups", ())})
            raise UsageError(f"--tasks: unknown task or group {name!r}{did_you_mean(name, list(known) + groups)} "
                             f"(groups: {', '.join(groups)}; `mkeval list` shows every task)")
    for c in out:
        if not isinstance(c, TaskConfig):
            entry = registry.entry("task", getattr(c, "name", "?")) if getattr(c, "name", None) else None
            who = f"plugin {entry.plugin!r} ({entry.distribution})" if entry else "a plugin"
            raise PluginError(f"{who} registered a task whose spec is not a mkeval.TaskConfig; build task specs "
                              "with mkeval.task_specs(folder)")
    return list({c.name: c for c in out}.values())


# --------------------------------------------------------------------------- hashes
def cell_hash(protocol: Protocol, cell: Cell, identity: dict[str, Any]) -> str:
    """Identity of a cell's result: the protocol narrowed to the cell's length and seed, and the cell."""
    narrowed = protocol.replace(seq_lens=(cell.seq_len,), seeds=(cell.seed,))
    return stable_hash({"protocol": narrowed.identity(), **identity})


def task_hash(unit: Unit, config: TaskConfig, fingerprint: str | None, protocol: Protocol,
              options: dict[str, Any]) -> str:
    """Identity of a task result: the protocol at the unit's seed, the unit, the spec, the data and the options."""
    return stable_hash({"protocol": protocol.replace(seeds=(unit.seed,)).identity(), "unit": unit.identity(),
                        "task": config_hash(config), "data": fingerprint, "options": options})


def quantizer(registry: Registry, precision: str) -> str | None:
    """What a post-training precision's numbers depend on besides the checkpoint (for the cell hash)."""
    spec = registry.get("precision", precision)
    if spec.quantize is None:
        return None
    entry = registry.entry("precision", precision)
    try:
        version = importlib.metadata.version("torchao")
    except Exception:  # noqa: BLE001 - a plugin may quantize without torchao
        version = "unknown"
    return f"{entry.distribution}:{spec.description}; torchao {version}"


# --------------------------------------------------------------------------- the cells
def plan_cells(registry: Registry, protocol: Protocol, models: list[str], datasets: list[str],
               precisions: list[PrecisionRole], model_options: dict[str, dict[str, Any]], data_dir: Path | None,
               limit_windows: int | None, sizing: Sizing, split_map: dict[str, str],
               dataset_options: dict[str, dict[str, Any]]) -> list[Job]:
    """The matrix in a fixed order: dataset, seq_len, seed, precision, model (models adjacent for comparison).

    A training precision's cell trains; a post-training or ``--evaluate-at`` precision's cell
    evaluates the checkpoint of the same model, dataset, length and seed trained at the first
    training precision.
    """
    shared_bits: dict[int, int] = {}
    for role in precisions:
        if role.role != "evaluation-only":
            b = registry.get("precision", role.name).bits
            shared_bits[b] = shared_bits.get(b, 0) + 1

    def name_of(model: str, dataset: str, seq_len: int, seed: int, role: PrecisionRole) -> str:
        bits = registry.get("precision", role.name).bits
        name = f"{model}_{dataset}_seq{seq_len}_bits{bits}"
        if role.role == "evaluation-only":
            name += f"_{role.name}_from_{role.trained_at}"
        elif shared_bits[bits] > 1:
            name += f"_{role.name}"
        return name + (f"_seed{seed}" if len(protocol.seeds) > 1 else "")

    jobs: list[Job] = []
    for dataset in datasets:
        for seq_len in protocol.seq_lens:
            for seed in protocol.seeds:
                trained: dict[tuple[str, str], Job] = {}
                for role in precisions:
                    for model in models:
                        cell = Cell(model, dataset, seq_len, role.name, seed)
                        ref = sizing.reference.get(model)
                        source = None if role.trains else trained[(model, role.trained_at)]
                        plan = CellPlan(cell, name_of(model, dataset, seq_len, seed, role), "", model_size(registry, protocol, model),
                                        model_options.get(model, {}), str(data_dir) if data_dir else None, limit_windows,
                                        ref, model_size(registry, protocol, ref) if ref else None, dict(split_map),
                                        model_options.get(ref, {}) if ref else {}, dataset_options.get(dataset, {}),
                                        source.name if source else None, source.job_hash if source else None,
                                        quantizer(registry, role.name), role.role, sizing.unmatched.get(model))
                        plan = dataclasses.replace(plan, cell_hash=cell_hash(protocol, cell, plan.identity))
                        if role.trains:
                            job: Job = TrainCell(plan.name, plan.cell_hash, (), plan)
                            trained[(model, role.name)] = job
                        else:
                            job = PrecisionEval(plan.name, plan.cell_hash, (source.name,), plan)
                        jobs.append(job)
    return jobs


def model_size(registry: Registry, protocol: Protocol, model: str) -> str | None:
    """The size preset ``model`` is built at: ``--model-size``, else the model's default."""
    return protocol.model_size or registry.get("model", model).default_size


# --------------------------------------------------------------------------- the downstream units
def plan_units(registry: Registry, protocol: Protocol, models: list[str], precisions: list[PrecisionRole],
               options: dict[str, dict[str, Any]], sizing: Sizing, cells: list[Job]) -> list[Unit]:
    """The models that run downstream tasks: one per training cell when the run pretrains, else one
    per model x training precision x seed, built from scratch (in the matrix's order)."""
    from ..engine.tasks import Pretrained

    trained = [j for j in cells if isinstance(j, TrainCell)]
    if trained:
        per_model = {j.plan.cell.model: sum(1 for k in trained if k.plan.cell.model == j.plan.cell.model)
                     for j in trained}
        return [Unit(j.plan.cell.model if per_model[j.plan.cell.model] == 1 else j.name, j.plan.cell.model,
                     j.plan.cell.precision, j.plan.cell.seed, j.plan.model_size,
                     pretrained=Pretrained(j.name, j.job_hash)) for j in trained]
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
                ref = sizing.reference[model]
                units.append(Unit(name, model, precision, seed, model_size(registry, protocol, model),
                                  options.get(model, {}), ref, model_size(registry, protocol, ref) if ref else None,
                                  options.get(ref, {}) if ref else {}, unmatched=sizing.unmatched.get(model)))
    return units


def plan_tasks(units: list[Unit], tasks: list[tuple[TaskConfig, str | None, str | None]], protocol: Protocol,
               options: dict[str, Any]) -> list[Job]:
    """One ``TaskUnit`` per unit and task; ``tasks`` holds (spec, data fingerprint, why it is skipped)."""
    jobs: list[Job] = []
    for unit in units:
        needs = (unit.pretrained.cell,) if unit.pretrained is not None else ()
        for config, fingerprint, skipped in tasks:
            jobs.append(TaskUnit(f"{unit.name}/{config.name}", task_hash(unit, config, fingerprint, protocol, options),
                                 needs, unit, config, fingerprint, skipped))
    return jobs
