"""The types of the downstream files: a task's result per unit, and a unit's summary.

``downstream/{unit}/{task}.json`` is a ``TaskResult`` (with a ``FinetuneResult`` and a
``PromptResult`` per shot count); ``{unit}_downstream.json`` is a ``UnitSummary``, whose
benchmark sections (``glue``, ``superglue``, ``squad``, ``mmlu``, or any plugin's group) are
written by the group's aggregator (``mkeval.registry.contracts.GroupSpec``). Readers go through
``from_json``, which keeps unknown keys of newer files in ``extra`` instead of failing.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypeVar

from .types import json_safe

T = TypeVar("T")


def _from_json(cls: type[T], data: dict[str, Any], nested: dict[str, Any] | None = None) -> T:
    """``cls`` from a JSON object: known fields by name (nested types converted), the rest in ``extra``."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in data.items() if k in names and k != "extra"}
    for key, convert in (nested or {}).items():
        if values.get(key) is not None:
            values[key] = convert(values[key])
    missing = [f.name for f in fields(cls) if f.name not in values and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{cls.__name__} without {', '.join(missing)}")
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**values, **({"extra": extra} if "extra" in names else {}))


def _to_json(obj: Any) -> dict[str, Any]:
    data = asdict(obj)
    extra = data.pop("extra", None) or {}
    return json_safe({**{k: v for k, v in data.items() if v is not None or k in ("status",)}, **extra})


@dataclass
class FinetuneResult:
    """The fine-tuned mode of a task: a head trained on the task's train split, scored on its eval split."""

    status: str  # ok | skipped
    metrics: dict[str, float] | None = None
    predictions_file: str | None = None
    examples: dict[str, int] | None = None  # train, eval
    inputs: dict[str, int] | None = None  # model inputs (span tasks: windows)
    steps: int | None = None
    epochs: int | None = None
    epoch_losses: list[float] | None = None
    seconds: float | None = None
    skipped_nonfinite: int | None = None
    head_parameters: int | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_examples(self) -> int:
        return (self.examples or {}).get("eval", 0)

    to_json = _to_json

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FinetuneResult":
        return _from_json(cls, data)


@dataclass
class PromptResult:
    """One shot count of log-likelihood scoring (``0-shot``, ``5-shot`` ...)."""

    status: str  # ok | skipped | degenerate
    metrics: dict[str, float] | None = None
    predictions_file: str | None = None
    examples: int | None = None
    shots: int | None = None  # asked for
    effective_shots: dict[str, float] | None = None  # mean, min, max: what the prompts held
    prompts_with_fewer_shots: int | None = None
    truncated_inputs: int | None = None
    truncated_share: float | None = None
    ties: int | None = None
    reason: str | None = None
    degenerate: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eval_examples(self) -> int:
        return self.examples or 0

    to_json = _to_json

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PromptResult":
        return _from_json(cls, data)


FINETUNED = "fine-tuned"


@dataclass
class TaskResult:
    """``downstream/{unit}/{task}.json``: one task for one unit (docs/results.md)."""

    task: str
    status: str  # ok | skipped | degenerate | failed
    unit: str
    model_name: str
    kind: str | None = None
    groups: list[str] = field(default_factory=list)
    category: str | None = None
    spec_file: str | None = None
    spec_hash: str | None = None
    metric_names: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    positive_label: str | None = None
    seed: int | None = None
    precision: str | None = None
    init: str | None = None  # scratch | pretrained
    pretrained_from: dict[str, Any] | None = None
    limit: int | None = None
    protocol_hash: str | None = None
    task_hash: str | None = None
    git_revision: str | None = None
    created: str | None = None
    reason: str | None = None
    error: str | None = None
    traceback_file: str | None = None
    data: dict[str, Any] | None = None
    tokenizer: dict[str, Any] | None = None
    max_len: int | None = None
    model_options: dict[str, Any] | None = None
    size_matching: dict[str, Any] | None = None
    contract_checks: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    finetune: FinetuneResult | None = None
    prompt: dict[str, PromptResult] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def modes(self) -> dict[str, FinetuneResult | PromptResult]:
        """Every mode, fine-tuned first, then by shot count."""
        out: dict[str, FinetuneResult | PromptResult] = {FINETUNED: self.finetune} if self.finetune else {}
        out.update(sorted(self.prompt.items(), key=lambda kv: int(kv[0].split("-")[0])))
        return out

    def ok_modes(self) -> dict[str, FinetuneResult | PromptResult]:
        return {m: r for m, r in self.modes().items() if r.status == "ok"}

    def headline(self) -> tuple[str, dict[str, float]] | None:
        """The reported mode and its metrics: fine-tuned if it ran, else the prompt mode with the most shots."""
        ok = self.ok_modes()
        if FINETUNED in ok:
            return FINETUNED, ok[FINETUNED].metrics
        if ok:
            mode = max(ok, key=lambda m: int(m.split("-")[0]))
            return mode, ok[mode].metrics
        return None

    def to_json(self) -> dict[str, Any]:
        data = _to_json(self)
        if self.finetune is not None:
            data["finetune"] = self.finetune.to_json()
        if self.prompt:
            data["prompt"] = {k: v.to_json() for k, v in self.prompt.items()}
        else:
            data.pop("prompt", None)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaskResult":
        return _from_json(cls, data, {"finetune": FinetuneResult.from_json,
                                      "prompt": lambda d: {k: PromptResult.from_json(v) for k, v in d.items()}})


@dataclass
class UnitSummary:
    """``{unit}_downstream.json``: a unit's tasks and, per benchmark group, what its aggregator wrote."""

    model_name: str
    unit: str
    seed: int | None = None
    precision: str | None = None
    init: str | None = None
    pretrained_from: str | None = None
    limit: int | None = None
    dev_holdout: bool = False
    skip_bad_rows: bool = False
    protocol: dict[str, Any] | None = None
    protocol_hash: str | None = None
    run: dict[str, Any] | None = None
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # written as top-level keys (glue, mmlu ...)
    other: dict[str, Any] | None = None  # tasks no group aggregated: metrics and mode
    skipped: dict[str, str] = field(default_factory=dict)
    degenerate: dict[str, dict[str, str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    task_results: dict[str, str] = field(default_factory=dict)  # task -> its TaskResult file, relative

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        benchmarks = data.pop("benchmarks")
        # the original pipeline's shape: each benchmark's section at the top level, then the rest
        return json_safe({**{k: v for k, v in data.items() if k not in ("other",)}, **benchmarks,
                          **({"other": self.other} if self.other else {}), "benchmark_groups": list(benchmarks)})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UnitSummary":
        groups = data.get("benchmark_groups")
        if groups is None:  # an older file: every mapping that is not a known field is a benchmark section
            known = {f.name for f in fields(cls)}
            groups = [k for k, v in data.items() if k not in known and isinstance(v, dict)]
        names = {f.name for f in fields(cls)} - {"benchmarks"}
        values = {k: v for k, v in data.items() if k in names}
        return cls(**values, benchmarks={g: data[g] for g in groups if isinstance(data.get(g), dict)})


def summarise_unit(unit: dict[str, Any], results: dict[str, TaskResult], groups: dict[str, Any],
                   members: dict[str, dict[str, Any]]) -> UnitSummary:
    """A unit's summary: each benchmark group's section from its aggregator (``GroupSpec``), given the
    unit's results of the group's tasks and the specs of all its members; tasks no aggregated group
    holds go to ``other`` (their headline metrics and mode). ``unit`` holds the summary's own fields."""
    benchmarks: dict[str, dict[str, Any]] = {}
    placed: set[str] = set()
    for name, spec in groups.items():
        mine = {t: r for t, r in results.items() if name in r.groups}
        if mine:
            benchmarks[name] = {**spec.aggregate(mine, members.get(name, {})), "pool": spec.pool}
            placed.update(mine)
    other = {}
    for name, result in results.items():
        head = result.headline()
        if name not in placed and head is not None:
            other[name] = {**head[1], "mode": head[0]}
    return UnitSummary(
        **unit, benchmarks=benchmarks, other=other or None,
        skipped={n: r.reason for n, r in results.items() if r.status == "skipped"},
        degenerate={n: {m: p.reason for m, p in r.prompt.items() if p.status == "degenerate"}
                    for n, r in results.items() if any(p.status == "degenerate" for p in r.prompt.values())},
        failed={n: r.error for n, r in results.items() if r.status == "failed"},
        task_results={n: f"downstream/{unit['unit']}/{n}.json" for n in results})
