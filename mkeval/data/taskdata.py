"""Reading a task's examples: the official local layouts under ``--data-dir``, or the Hugging Face hub.

Readers turn each file into rows (dicts) in the task's field names; every row is checked
(fields present, label in the label set) and a bad row is an error naming the file and
line, or, with ``skip_bad_rows``, counted and left out. A task whose files are absent is
not an error: it is reported as skipped with the paths that were looked for.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..errors import UsageError
from .taskspec import HubSource, LocalLayout, TaskConfig, canon, lookup, template_fields

log = logging.getLogger(__name__)
csv.field_size_limit(1 << 30)


class TaskSkipped(Exception):
    """The task cannot run here (files absent, hub unreachable); the message says why."""


@dataclass
class TaskData:
    """A task's rows by role (``train``, ``eval``, ``fewshot``) and where they came from."""

    rows: dict[str, list[dict[str, Any]]]
    source: str
    files: dict[str, list[str]] = field(default_factory=dict)
    skipped_rows: dict[str, int] = field(default_factory=dict)
    total_rows: dict[str, int] = field(default_factory=dict)  # before --limit
    missing: dict[str, str] = field(default_factory=dict)  # role -> why it is absent
    train_from_eval: bool = False  # --dev-holdout: train is a seeded half of the eval split
    fingerprint: str = ""

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "files": self.files, "examples": {r: len(v) for r, v in self.rows.items()},
                "rows_before_limit": self.total_rows, "skipped_rows": self.skipped_rows,
                "missing_roles": self.missing, "train_from_eval_holdout": self.train_from_eval}


def load_task_data(config: TaskConfig, data_dir: Path | None, skip_bad_rows: bool = False, limit: int | None = None,
                   dev_holdout: bool = False, seed: int = 1234,
                   readers: Mapping[str, Callable[[Path], Iterator[tuple[str, dict[str, Any]]]]] | None = None
                   ) -> TaskData:
    """The task's rows; raises ``TaskSkipped`` when the eval split is unavailable. ``readers`` are the
    registered formats beyond the built-in ones (format name -> ``read(path)``)."""
    if data_dir is not None:
        data = _load_local(config, data_dir, skip_bad_rows, readers if readers is not None else registered_readers())
    elif config.hub is not None:
        data = _load_hub(config, config.hub, skip_bad_rows)
    else:
        raise TaskSkipped("no --data-dir given and the spec names no Hugging Face dataset")
    if "train" not in data.rows and dev_holdout and config.finetune:
        rows = list(data.rows["eval"])
        random.Random(f"{seed}:{config.name}").shuffle(rows)
        half = len(rows) // 2
        data.rows["train"], data.rows["eval"] = rows[:half], rows[half:]
        data.train_from_eval = True
        data.missing.pop("train", None)
    data.total_rows = {r: len(v) for r, v in data.rows.items()}
    if limit is not None:
        data.rows = {r: _first(v, limit, config.group) if r != "fewshot" else v for r, v in data.rows.items()}
    return data


def _first(rows: list[dict[str, Any]], limit: int, group: str | None) -> list[dict[str, Any]]:
    """The first ``limit`` rows, or with a group field (MultiRC's question) the rows of the first ``limit`` groups."""
    if not group:
        return rows[:limit]
    keep: set[str] = set()
    out = []
    for row in rows:
        g = str(lookup(row, group, row["_where"]))
        if g not in keep and len(keep) == limit:
            continue
        keep.add(g)
        out.append(row)
    return out


# --------------------------------------------------------------------------- local files
def _resolve(layout: LocalLayout, data_dir: Path) -> tuple[dict[str, list[Path]], dict[str, list[str]]]:
    """Files found for each role (under the first root that holds the eval files) and the paths tried."""
    tried: dict[str, list[str]] = {}
    for root in layout.roots:
        found: dict[str, list[Path]] = {}
        for role, patterns in layout.files.items():
            paths: list[Path] = []
            complete = True  # every file a role names must be there (CoLA's dev is two files)
            for pattern in patterns:
                full = data_dir / root / pattern
                if glob.has_magic(pattern):
                    matches = sorted(Path(p) for p in glob.glob(str(full)))
                else:
                    matches = [full] if full.is_file() else []
                complete = complete and bool(matches)
                paths.extend(matches)
                tried.setdefault(role, []).append(str(Path(root) / pattern))
            if complete:
                found[role] = paths
        if "eval" in found:
            return found, tried
    return {}, tried


def _load_local(config: TaskConfig, data_dir: Path, skip: bool,
                readers: Mapping[str, Callable[[Path], Iterator[tuple[str, dict[str, Any]]]]]) -> TaskData:
    tried_all: list[str] = []
    for layout in config.local:
        found, tried = _resolve(layout, data_dir)
        tried_all.extend(tried.get("eval", []))
        if not found:
            continue
        data = TaskData(rows={}, source=f"local:{data_dir}", files={r: [str(p) for p in ps] for r, ps in found.items()})
        digest = hashlib.sha256()
        parsed: dict[tuple[Path, ...], tuple[list[dict[str, Any]], int]] = {}  # roles may share files
        for role, paths in found.items():
            key = tuple(paths)
            if key not in parsed:
                rows, bad = [], 0
                for path in paths:
                    digest.update(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
                    examples = 0
                    for where, raw in _read(config, layout, path, readers):
                        examples += 1
                        try:
                            rows.append(_row(config, layout.fields, layout.label_values, raw, where))
                        except (KeyError, ValueError) as exc:
                            if not skip:
                                raise UsageError(f"{exc.args[0]} (pass --skip-bad-rows to leave such rows out)") from None
                            bad += 1
                    if examples == 0:
                        what = "a header but no rows" if layout.format in ("tsv", "csv") and layout.header else "no rows"
                        raise UsageError(f"{path}:1: the {role} file of task {config.name!r} holds {what}; "
                                         "give the complete official file")
                if not rows:
                    raise UsageError(f"task {config.name!r}: every {role} row of {', '.join(map(str, paths))} is bad "
                                     f"({bad} left out by --skip-bad-rows); nothing is left to run on")
                parsed[key] = (rows, bad)
            rows, bad = parsed[key]
            data.rows[role], data.skipped_rows[role] = list(rows), bad
        data.fingerprint = digest.hexdigest()[:16]
        for role in ("train", "fewshot"):
            if role in layout.files and role not in found:
                data.missing[role] = "absent: " + ", ".join(tried.get(role, []))
        return data
    raise TaskSkipped(f"files absent under {data_dir}: looked for " + ", ".join(dict.fromkeys(tried_all)))


def registered_readers(registry: Any = None) -> dict[str, Callable[[Path], Iterator[tuple[str, dict[str, Any]]]]]:
    """Every format a plugin registers (``ReaderSpec``), by name."""
    from ..registry import get_registry

    registry = registry or get_registry()
    return {name: registry.get("reader", name).read for name in registry.names("reader")}


BUILT_IN = ("tsv", "csv", "jsonl")  # other formats come from plugins (ReaderSpec: SQuAD, MultiRC, ReCoRD ...)


def _read(config: TaskConfig, layout: LocalLayout, path: Path,
          readers: Mapping[str, Callable[[Path], Iterator[tuple[str, dict[str, Any]]]]]
          ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, raw row)`` for each example in ``path``: a built-in format or a registered reader."""
    if layout.format in ("tsv", "csv"):
        yield from _read_table(layout, path)
    elif layout.format == "jsonl":
        yield from read_jsonl(path)
    elif layout.format in readers:
        yield from readers[layout.format](path)
    else:
        known = ", ".join([*BUILT_IN, *sorted(readers)])
        raise UsageError(f"{config.where}: format {layout.format!r} is neither built in nor registered by an "
                         f"installed plugin (a ReaderSpec); formats: {known}")


def _decoded(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 are an error naming the line they are on."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column {column})") from None


def _read_table(layout: LocalLayout, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    delimiter = "\t" if layout.format == "tsv" else ","
    quoting = csv.QUOTE_NONE if layout.format == "tsv" else csv.QUOTE_MINIMAL  # GLUE tsvs hold bare quotes
    with io.StringIO(_decoded(path), newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        columns = list(layout.columns)
        try:
            if layout.header:
                header = next(reader)
                columns = columns or [c.strip() for c in header]
            start = reader.line_num + 1  # a quoted field may span lines: name the line the row starts on
            for row in reader:
                where, start = f"{path}:{start}", reader.line_num + 1
                if not row or row == [""]:
                    continue
                if len(row) != len(columns):
                    yield where, {"__error__": f"{where}: {len(row)} columns, expected {len(columns)} "
                                               f"({', '.join(columns)})"}
                    continue
                yield where, dict(zip(columns, row))
        except StopIteration:
            raise UsageError(f"{path}: the file is empty") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}:{reader.line_num}: cannot parse ({exc})") from None


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, object)`` per JSON line; a malformed line or a non-object is a bad row."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield where, {"__error__": f"{where}: malformed JSON line ({exc})"}
                continue
            yield where, obj if isinstance(obj, dict) else {"__error__": f"{where}: a JSON line must be an object"}


# --------------------------------------------------------------------------- hub
def _load_hub(config: TaskConfig, hub: HubSource, skip: bool) -> TaskData:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise TaskSkipped(f"the datasets library is not importable ({exc})") from None
    from . import hub as hub_check

    if hub_check.offline_mode() is None and (reason := hub_check.unreachable()) is not None:
        raise TaskSkipped(f"Hugging Face dataset {hub.path}/{hub.name or ''}: the hub is not reachable ({reason}); "
                          "give --data-dir with the official files, or set HF_HUB_OFFLINE=1 to read the Hugging "
                          "Face cache only")
    data = TaskData(rows={}, source=f"hub:{hub.path}" + (f"/{hub.name}" if hub.name else ""))
    for role, split in hub.splits.items():
        try:
            ds = datasets.load_dataset(hub.path, hub.name, split=split)
        except Exception as exc:  # offline, gated, renamed: the task is skipped, with the reason
            if role == "eval":
                raise TaskSkipped(f"Hugging Face dataset {hub.path}/{hub.name or ''} split {split!r} could not be "
                                  f"loaded ({type(exc).__name__}: {str(exc)[:200]}); give --data-dir with the "
                                  f"official files instead") from None
            data.missing[role] = f"hub split {split!r} unavailable ({type(exc).__name__})"
            continue
        rows, bad = [], 0
        for i, raw in enumerate(ds):
            where = f"{data.source}[{split}] row {i}"
            try:
                rows.append(_row(config, hub.fields, hub.label_values, dict(raw), where))
            except (KeyError, ValueError) as exc:
                if not skip:
                    raise UsageError(f"{exc.args[0]} (pass --skip-bad-rows to leave such rows out)") from None
                bad += 1
        data.rows[role], data.skipped_rows[role] = rows, bad
        data.files[role] = [f"{data.source}:{split}"]
    data.fingerprint = hashlib.sha256(data.source.encode()).hexdigest()[:16]
    return data


# --------------------------------------------------------------------------- rows
def _check_answer_starts(context: str, answers: list[str], starts: Any, where: str) -> None:
    """Each gold answer sits in its context at its ``answer_start`` (SQuAD's character offset)."""
    if not isinstance(starts, list) or len(starts) != len(answers):
        raise ValueError(f"{where}: {len(answers)} answers but answer_start {starts!r}")
    for text, start in zip(answers, starts):
        if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= len(context) - len(text):
            raise ValueError(f"{where}: answer_start {start!r} of answer {text!r} is outside its context "
                             f"({len(context)} characters)")
        if context[start: start + len(text)] != text:
            raise ValueError(f"{where}: the context at answer_start {start} reads "
                             f"{context[start: start + len(text)]!r}, not the answer {text!r}")


def _row(config: TaskConfig, rename: dict[str, str], label_values: tuple[Any, ...], raw: dict[str, Any],
         where: str) -> dict[str, Any]:
    """A raw row in the task's field names, checked; ``KeyError``/``ValueError`` name ``where``."""
    if "__error__" in raw:
        raise ValueError(raw["__error__"])
    row = dict(raw)
    for canonical, source in rename.items():
        row[canonical] = lookup(raw, source, where)
    needed = [f for t in (*config.inputs, *config.choices) for f in template_fields(t)]
    needed += [f for f in (config.label if not config.answers else None, config.answers, config.context,
                           config.question, config.choices_field, config.group) if f]
    for name in needed:
        lookup(row, name, where)
    ident = lookup(row, config.id, where) if config.id else where.rsplit("/", 1)[-1]
    row["_id"], row["_where"] = str(ident), where
    if config.kind == "regression":
        try:
            row["_label"] = float(lookup(row, config.label, where))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {lookup(row, config.label, where)!r} is not a number") from None
        if not math.isfinite(row["_label"]):
            raise ValueError(f"{where}: label {lookup(row, config.label, where)!r} is not a finite number")
    elif config.label and not config.answers and config.kind in ("classification", "multiple_choice"):
        value = canon(lookup(row, config.label, where))
        spelled = [canon(v) for v in (label_values or config.labels)]
        if value not in spelled:
            raise ValueError(f"{where}: unknown label {value!r}; the task's labels are {', '.join(spelled)}")
        row["_label"] = spelled.index(value)
    if config.answers:
        answers = lookup(row, config.answers, where)
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: {config.answers!r} must be a list of answer strings")
        if config.kind == "span" and not answers:
            raise ValueError(f"{where}: no gold answer")
        if config.kind == "span" and row.get("answer_starts") is not None:
            _check_answer_starts(str(lookup(row, config.context, where)), answers, row["answer_starts"], where)
    if config.choices_field:
        options = lookup(row, config.choices_field, where)
        if not isinstance(options, list) or not options:
            raise ValueError(f"{where}: {config.choices_field!r} must be a non-empty list of options")
    return row
