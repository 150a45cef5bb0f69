"""Task specs: the YAML schema of a downstream task, read with a safe loader.

The dataclasses below are the single source of truth for the schema: a key that is not
a field is an error naming the spec file, the line and the key. A spec is data only
(templates are ``{field}`` substitutions, never code). ``docs/tasks.md`` documents it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import UsageError
from ..protocol import read_yaml

KINDS = ("classification", "regression", "multiple_choice", "span")
ROLES = ("train", "eval", "fewshot")
_TEMPLATE = re.compile(r"\{([A-Za-z_][\w.]*)(\|strip)?\}")


@dataclass(frozen=True)
class LocalLayout:
    """One official file layout under ``--data-dir``: role -> files (globs allowed), relative to the root."""

    format: str
    files: dict[str, tuple[str, ...]]
    roots: tuple[str, ...] = ("",)  # alternative folders the files may sit in (e.g. glue, glue_data)
    columns: tuple[str, ...] = ()  # tsv/csv without a header row: the column names, in order
    header: bool = True  # tsv/csv: the first row names the columns
    fields: dict[str, str] = field(default_factory=dict)  # canonical field -> this layout's field
    label_values: tuple[Any, ...] = ()  # this layout's spelling of ``labels``, in order (default: the same)


@dataclass(frozen=True)
class HubSource:
    """The Hugging Face dataset: ``datasets.load_dataset(path, name)``, role -> split."""

    path: str
    splits: dict[str, str]
    name: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    label_values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """Zero/few-shot log-likelihood scoring (lm-evaluation-harness's multiple-choice format)."""

    text: str  # the question, as a template
    choices: tuple[str, ...]  # the continuation scored for each option (templates, after ``target_delimiter``)
    description: str = ""  # put before the few-shot examples
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"


@dataclass(frozen=True)
class TaskConfig:
    """One downstream task (one YAML file in ``tasks/``)."""

    name: str
    kind: str
    groups: tuple[str, ...] = ()
    description: str = ""
    category: str | None = None  # a sub-group, e.g. an MMLU category
    metrics: tuple[str, ...] = ()
    local: tuple[LocalLayout, ...] = ()
    hub: HubSource | None = None
    id: str | None = None  # field holding the example id (default: file and line)
    inputs: tuple[str, ...] = ()  # text segments (templates); the model reads them joined by a separator
    label: str | None = None  # field holding the label (classification, regression, multiple choice)
    labels: tuple[Any, ...] = ()  # the label set (classification) or the label of each choice (multiple choice)
    positive_label: Any = None  # positive class for F1
    choices: tuple[str, ...] = ()  # multiple choice: one template per option
    choices_field: str | None = None  # multiple choice: a field holding a list of options instead
    placeholder: str | None = None  # replaced in ``inputs[-1]`` by each option (ReCoRD's @placeholder)
    answers: str | None = None  # field holding the list of gold answers (span, ReCoRD)
    context: str | None = None  # span: the passage field
    question: str | None = None  # span: the question field
    group: str | None = None  # field grouping examples for a metric (MultiRC's question)
    leaderboard_task: str | None = None  # tasks naming the same leaderboard task count once (MNLI m/mm)
    prompt: Prompt | None = None
    finetune: bool = True  # fine-tune a head (needs a train split); False: prompt scoring only
    source_file: str = ""  # set by the loader

    @property
    def where(self) -> str:
        return self.source_file or f"task {self.name!r}"


def render(template: str, row: dict[str, Any], where: str) -> str:
    """Substitute ``{field}``, ``{a.b}`` (nested) and ``{field|strip}`` from ``row``."""
    def one(match: re.Match) -> str:
        value = lookup(row, match.group(1), where)
        text = "" if value is None else str(value)
        return text.strip() if match.group(2) else text
    return _TEMPLATE.sub(one, template)


def template_fields(template: str) -> list[str]:
    return [m.group(1) for m in _TEMPLATE.finditer(template)]


def lookup(row: dict[str, Any], path: str, where: str) -> Any:
    """``row["a"]["b"]`` for ``"a.b"``; a missing field is a ``KeyError`` naming it and ``where``."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(f"{where}: missing field {path!r}")
    return value


def canon(value: Any) -> str:
    """How labels compare across files: JSON ``true``, YAML ``true`` and ``"True"`` all read ``"true"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return text.lower() if text.lower() in ("true", "false") else text


# --------------------------------------------------------------------------- loading
def load_task_file(path: str | Path) -> TaskConfig:
    """Read and validate one spec; every error names the file (and the line where known)."""
    path = Path(path)
    data, node = read_yaml(path, "task spec")
    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: a task spec must be a mapping of field: value")
    config = _build(TaskConfig, data, node, str(path))
    config = dataclasses.replace(config, source_file=str(path))
    _check(config, node)
    return config


def load_task_dir(directory: str | Path) -> list[TaskConfig]:
    """Every ``*.yaml``/``*.yml`` spec below ``directory``, sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"--include-path {directory}: not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    return [load_task_file(p) for p in paths]


def _line(node: Any, key: str | None = None) -> int:
    if key is not None and isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == key:
                return k.start_mark.line + 1
    return node.start_mark.line + 1 if node is not None else 1


def _child(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


_NESTED = {"local": LocalLayout, "hub": HubSource, "prompt": Prompt}


def _build(cls: type, data: dict[str, Any], node: Any, path: str) -> Any:
    known = {f.name: f for f in fields(cls) if f.name != "source_file"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}:{_line(node, str(key))}"
        if key not in known:
            raise UsageError(f"{where}: unknown field {key!r} in {cls.__name__}; known fields: {', '.join(known)}")
        if key in _NESTED and value is not None:
            sub = _NESTED[key]
            child = _child(node, key)
            if key == "local":
                items = value if isinstance(value, list) else [value]
                nodes = child.value if isinstance(child, yaml.SequenceNode) else [child]
                if not all(isinstance(i, dict) for i in items):
                    raise UsageError(f"{where}: 'local' must be a layout mapping or a list of them")
                value = tuple(_build(sub, i, n, path) for i, n in zip(items, nodes))
            else:
                if not isinstance(value, dict):
                    raise UsageError(f"{where}: {key!r} must be a mapping")
                value = _build(sub, value, child, path)
        elif key == "files":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: 'files' must map a role ({', '.join(ROLES)}) to a path or a list")
            value = {r: tuple(v if isinstance(v, list) else [v]) for r, v in value.items()}
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    missing = [n for n, f in known.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in values]
    if missing:
        raise UsageError(f"{path}:{_line(node)}: {cls.__name__} is missing required field(s) {', '.join(missing)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise UsageError(f"{path}:{_line(node)}: {exc}") from None


def _check(c: TaskConfig, node: Any) -> None:
    def fail(key: str, what: str) -> None:
        raise UsageError(f"{c.source_file}:{_line(node, key)}: field {key!r}: {what}")

    if not isinstance(c.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", c.name) or ".." in c.name:
        fail("name", f"must be letters, digits, '_', '-' or '.', starting with a letter or digit (it names "
                     f"files in the output dir), got {c.name!r}")
    if c.kind not in KINDS:
        fail("kind", f"unknown task kind {c.kind!r}; known kinds: {', '.join(KINDS)}")
    if not all(isinstance(g, str) for g in c.groups):
        fail("groups", "must be a list of names")
    if not c.local and c.hub is None:
        fail("name", "a task needs a data source: 'local' layouts and/or 'hub'")
    for layout in c.local:
        if not isinstance(layout.format, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", layout.format):
            fail("local", f"format must be a name (tsv, csv, jsonl, or one a plugin registers), got {layout.format!r}")
        bad = [r for r in layout.files if r not in ROLES]
        if bad or "eval" not in layout.files:
            fail("local", f"files must map roles {', '.join(ROLES)} (eval required) to paths, got {sorted(layout.files)}")
        if layout.format in ("tsv", "csv") and not layout.header and not layout.columns:
            fail("local", "a tsv/csv layout without a header row needs 'columns'")
        if layout.label_values and len(layout.label_values) != len(c.labels):
            fail("local", "label_values must list one value per entry of 'labels'")
    if c.hub is not None and "eval" not in c.hub.splits:
        fail("hub", "splits must name the eval split")
    need = {"classification": ("inputs", "label", "labels"), "regression": ("inputs", "label"),
            "multiple_choice": ("inputs", "label" if not c.answers else "answers"), "span": ("context", "question", "answers")}
    for key in need[c.kind]:
        if not getattr(c, key):
            fail("kind", f"a {c.kind} task needs {key!r}")
    if c.kind == "multiple_choice" and not c.choices and not c.choices_field:
        fail("kind", "a multiple_choice task needs 'choices' (templates) or 'choices_field'")
    if c.kind == "multiple_choice" and c.choices and c.labels and len(c.labels) != len(c.choices):
        fail("labels", f"lists {len(c.labels)} labels for {len(c.choices)} choices")
    if c.positive_label is not None and canon(c.positive_label) not in [canon(v) for v in c.labels]:
        fail("positive_label", f"{c.positive_label!r} is not one of the labels")
    if not c.metrics:
        fail("metrics", "name at least one metric")
    from ..metrics import METRICS

    for m in c.metrics:
        if m not in METRICS:
            fail("metrics", f"unknown metric {m!r}; known metrics: {', '.join(sorted(METRICS))}")
    if c.prompt is not None and c.kind not in ("multiple_choice", "classification"):
        fail("prompt", "prompt scoring applies to classification and multiple_choice tasks")
    if c.prompt is not None and c.labels and len(c.prompt.choices) != len(c.labels):
        fail("prompt", f"lists {len(c.prompt.choices)} choices for {len(c.labels)} labels")
    if not c.finetune and c.prompt is None:
        fail("finetune", "a task that is not fine-tuned needs a 'prompt'")


def task_specs(directory: str | Path) -> list[Any]:
    """``TaskSpec``s for every spec file below ``directory`` (what a task plugin registers)."""
    from ..registry.contracts import TaskSpec

    return [TaskSpec(name=c.name, groups=c.groups, spec=c, description=c.description)
            for c in load_task_dir(directory)]


def specs_in(configs: Iterable[TaskConfig]) -> dict[str, TaskConfig]:
    """Configs by name; the same name twice is an error naming both files."""
    out: dict[str, TaskConfig] = {}
    for c in configs:
        if c.name in out:
            raise UsageError(f"task {c.name!r} is defined twice: {out[c.name].source_file} and {c.source_file}")
        out[c.name] = c
    return out
