"""``RunRequest``: the single source of run options.

Every option of ``mkeval run`` is one field here, with its CLI flag, help, default and kind in
the field's metadata. The CLI's arguments, the keys a ``--config`` YAML file may hold and the
keywords of ``mkeval.run(...)`` are all derived from these fields, and all three build a request
the same way, with one precedence rule: **an explicit value (flag or keyword) beats the config
file, which beats the defaults** (for protocol fields: then a ``protocol=`` object, then
``Protocol()``'s defaults). Errors name the option, or the config file and line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import UsageError, did_you_mean
from ..protocol import Protocol, read_yaml


def option(flag: str | None, help: str, kind: str, default_text: str | None = None, protocol: str | None = None,
           aliases: tuple[str, ...] = ()) -> Any:
    """A request field: its CLI ``flag`` (None: config file and Python only), ``help``, ``kind`` (names, ints,
    int, float, str, bool, mapping, path), what ``--help`` shows as its default, the protocol field it sets."""
    return field(default=None, metadata={"flag": flag, "help": help, "kind": kind, "default_text": default_text,
                                         "protocol": protocol, "aliases": aliases})


@dataclass(frozen=True)
class RunRequest:
    """What to run, where and how: every option of ``mkeval run`` (None: not given)."""

    models: list[str] | None = option("--models", "comma-separated model names", "names",
                                      "every registered model", aliases=("--model",))
    datasets: list[str] | None = option("--datasets", "comma-separated language-modelling datasets", "names",
                                        "markov (without --tasks)")
    tasks: list[str] | None = option("--tasks", "comma-separated downstream tasks or groups (glue, superglue, squad, "
                                     "mmlu, mmlu_stem, ...); fine-tuned from each --datasets pretraining cell, "
                                     "or from scratch without it", "names", "none")
    include_path: list[str] | None = option("--include-path", "extra folder(s) of task spec YAML files", "names",
                                            "none", aliases=("--include_path",))
    precisions: list[str] | None = option("--precisions", "comma-separated precisions: fp32, bf16, fp16 train; "
                                          "int8, int4 evaluate the first one's checkpoint", "names", "fp32")
    bits: list[int] | None = option("--bits", "bit widths, an alias for --precisions: 32 (fp32), 16 (fp16), "
                                    "8 (int8), 4 (int4)", "ints", "none")
    evaluate_at: list[str] | None = option("--evaluate-at", "float precisions at which to evaluate the first "
                                           "training precision's checkpoint without retraining", "names", "none")
    seq_lens: list[int] | None = option("--seq-len", "comma-separated sequence lengths", "ints", None,
                                        protocol="seq_lens")
    seeds: list[int] | None = option("--seeds", "comma-separated training seeds", "ints", None, protocol="seeds")
    fewshot: list[int] | None = option("--fewshot", "shot counts for prompt-scored tasks", "ints", None,
                                       protocol="fewshot", aliases=("--num_fewshot",))
    train_tokens: int | None = option("--train-tokens", "training budget in tokens", "int", None,
                                      protocol="train_tokens")
    batch_size: int | None = option("--batch-size", "sequences per optimiser step", "int", None,
                                    protocol="batch_size", aliases=("--batch_size",))
    lr: float | None = option("--lr", "peak learning rate", "float", None, protocol="lr")
    eval_interval: int | None = option("--eval-interval", "optimiser steps between validations", "int", None,
                                       protocol="eval_interval")
    model_size: str | None = option("--model-size", "size preset for every model (tiny, small, base)", "str",
                                    "each model's default", protocol="model_size")
    tokenizer: str | None = option("--tokenizer", "word, byte, bpe[:VOCAB], or a local Hugging Face tokenizer "
                                   "folder", "str", None, protocol="tokenizer")
    eval_stride: int | None = option("--eval-stride", "sliding-window evaluation stride in tokens", "int",
                                     "seq_len: non-overlapping", protocol="eval_stride")
    grad_checkpointing: bool | None = option("--grad-checkpointing", "recompute activations in the backward pass "
                                             "(long sequences; the model must support it)", "bool", None,
                                             protocol="grad_checkpointing")
    match_params: str | None = option("--match-params", "size every model to REF's non-embedding parameter count "
                                      "(within 3%%), or none", "str", "the first model")
    output_dir: str | None = option("--output-dir", "where result files go", "path", "results",
                                    aliases=("--output_path",))
    data_dir: str | None = option("--data-dir", "root folder of local dataset and task files (one folder per "
                                  "dataset)", "path", "download")
    split_map: str | dict | None = option("--split-map", "read a role from another split, e.g. train=valid", "str",
                                          "none")
    allow_test_contamination: bool | None = option("--allow-test-contamination", "accept a --split-map that trains "
                                                   "or selects the checkpoint on the test split (every result is "
                                                   "then marked)", "bool", "refused")
    limit: int | None = option("--limit", "downstream tasks: use at most N examples per task split (lm-eval's "
                               "--limit); quick runs", "int", "every example")
    limit_windows: int | None = option("--limit-windows", "language-modelling cells: evaluate at most N validation "
                                       "and N test windows; quick runs", "int", "every window")
    skip_bad_rows: bool | None = option("--skip-bad-rows", "leave out (and count) task data rows with missing "
                                        "fields or unknown labels", "bool", "off: a bad row is an error")
    dev_holdout: bool | None = option("--dev-holdout", "tasks without a train split: fine-tune on a seeded half of "
                                      "the eval split, evaluate on the rest", "bool", "off")
    device: str | None = option("--device", "cpu, cuda, cuda:1 ...", "str", "cuda when available")
    resume: bool | None = option("--resume", "skip jobs whose result exists for the same hash; continue a killed "
                                 "cell from its last training state", "bool", "off")
    dry_run: bool | None = option("--dry-run", "list the jobs and exit", "bool", "off")
    threads: int | None = option("--threads", "CPU threads per job (torch intra-op); numbers are bitwise the same "
                                 "across executors at the same count, and may differ between counts", "int",
                                 "OMP_NUM_THREADS when set, else the CPUs this process may use (affinity and CPU quota, not the core "
                                 "count); with --ray-cpus, that many")
    shard: str | None = option("--shard", "run shard I of N (0-based) of the plan's jobs, e.g. "
                               "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; merge with a final --resume run",
                               "str", "all jobs")
    executor: str | None = option("--executor", "local (one process) or ray (the jobs as Ray tasks; "
                                  "pip install 'mkeval[ray]')", "str", "local")
    ray_address: str | None = option("--ray-address", "the Ray cluster to join (auto, HOST:PORT, ray://...)",
                                     "str", "a local Ray instance")
    ray_cpus: float | None = option("--ray-cpus", "CPUs Ray reserves per job", "float", "--threads")
    ray_gpus: float | None = option("--ray-gpus", "GPUs Ray reserves per job; a fraction lets small jobs share a "
                                    "GPU", "float", "0 on --device cpu, else 1")
    ray_retries: int | None = option("--ray-retries", "times Ray reruns a job whose worker died", "int", "3")
    model_options: dict | None = option(None, "model name -> build options", "mapping")
    dataset_options: dict | None = option(None, "dataset name -> load options", "mapping")

    # ------------------------------------------------------------------ building
    @classmethod
    def from_values(cls, values: dict[str, Any], where: dict[str, str] | None = None) -> "RunRequest":
        """Parsed and checked values (CLI strings, Python values or YAML data); ``where`` names their source."""
        known = {f.name: f for f in fields(cls)}
        out = {}
        for name, value in values.items():
            if name not in known:
                raise UsageError(f"{(where or {}).get(name, 'mkeval.run')}: unknown option {name!r}")
            if value is None:
                continue
            out[name] = _parse(known[name], value, (where or {}).get(name) or _label(known[name]))
        return cls(**out)

    def merged_over(self, base: "RunRequest") -> "RunRequest":
        """This request's explicit values over ``base``'s (e.g. a config file's)."""
        return dataclasses.replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                            if getattr(self, f.name) is not None})

    def protocol(self, base: Protocol | None = None, file_protocol: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Protocol:
        """The protocol: ``base`` (or the defaults) <- the config file's fields <- this request's protocol options
        <- ``extra`` (any other protocol field given as a keyword)."""
        values = (base or Protocol()).to_dict()
        values.update(file_protocol or {})
        for f in fields(self):
            target, value = f.metadata["protocol"], getattr(self, f.name)
            if target and value is not None:
                values[target] = tuple(value) if isinstance(value, list) else value
        values.update({k: v for k, v in (extra or {}).items() if v is not None})
        return Protocol.from_dict(values, source="protocol")

    def get(self, name: str, default: Any = None) -> Any:
        value = getattr(self, name)
        return default if value is None else value


def _label(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def _parse(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = f.metadata["kind"]
    if kind == "names":
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise UsageError(f"{where}: must be a comma-separated string or a list of names, got {value!r}")
        names = [i.strip() for i in items]
        if not names or any(not n for n in names):
            raise UsageError(f"{where}: empty name in {value!r}")
        return list(dict.fromkeys(names))
    if kind == "ints":
        items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else value)
        out = []
        for item in items:
            if isinstance(item, bool):
                raise UsageError(f"{where}: {item!r} is not an integer")
            try:
                out.append(int(str(item).strip()))
            except ValueError:
                raise UsageError(f"{where}: {str(item).strip()!r} is not an integer") from None
        minimum = 0 if f.name in ("seeds", "fewshot") else 1
        bad = [n for n in out if n < minimum]
        if bad:
            raise UsageError(f"{where}: {bad[0]} must be >= {minimum}")
        if not out:
            raise UsageError(f"{where}: no value given")
        return list(dict.fromkeys(out))
    if kind == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if f.name in ("eval_stride", "ray_retries") else 1):
            raise UsageError(f"{where}: must be a {'non-negative' if f.name in ('eval_stride', 'ray_retries') else 'positive'} "
                             f"integer, got {value!r}")
        return value
    if kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: must be a number, got {value!r}") from None
        if isinstance(value, bool):
            raise UsageError(f"{where}: must be a number, got {value!r}")
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"{where}: must be true or false, got {value!r}")
        return value
    if kind == "mapping":
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise UsageError(f"{where}: must map a name to a mapping of options, got {value!r}")
        return value
    if f.name == "split_map":
        if not isinstance(value, (str, dict)):
            raise UsageError(f"{where}: must be ROLE=SPLIT text or a mapping, got {value!r}")
        return value
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise UsageError(f"{where}: must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------- config files
def read_config(path: str | Path) -> tuple[RunRequest, dict[str, Any], dict[str, str]]:
    """A YAML config: ``(request, protocol fields, key -> file:line)``. Protocol fields and request
    options may both appear; an option that sets a protocol field (``seq_lens``) is read as that field."""
    path = Path(path)
    data, root = read_yaml(path, "--config")
    if data is None:
        return RunRequest(), {}, {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}:1: a config file must be a mapping of field: value")
    where = positions(path, root)
    protocol_fields = {f.name: f for f in dataclasses.fields(Protocol)}
    request_fields = {f.name for f in fields(RunRequest) if not f.metadata["protocol"]} - {"dry_run", "resume"}
    protocol_values: dict[str, Any] = {}
    request_values: dict[str, Any] = {}
    aliases = config_aliases()
    for key, value in data.items():
        at = where.get(str(key), str(path))
        if key in aliases:  # a flag's spelling (seq_len for --seq-len, lm-eval's num_fewshot, ...)
            if aliases[key] in data:
                raise UsageError(f"{at}: {key!r} and {aliases[key]!r} are the same option; give it once")
            where[aliases[key]] = at
            key = aliases[key]
        if key in request_fields:
            request_values[key] = value
        elif key in protocol_fields:
            protocol_values[key] = _coerce(key, value, at)
        else:
            known = sorted(list(protocol_fields) + list(request_fields))
            raise UsageError(f"{at}: unknown config key {key!r}{did_you_mean(key, known + list(aliases))}; known "
                             f"keys: {', '.join(known)}")
    try:
        Protocol(**{**Protocol().to_dict(), **protocol_values})
    except UsageError as exc:
        bad = next((k for k in protocol_values if repr(k) in str(exc)), None)
        raise UsageError(f"{where.get(bad, str(path)) if bad else path}: {exc}") from exc
    return RunRequest.from_values(request_values, where), protocol_values, where


def positions(path: Path, root: Any) -> dict[str, str]:
    """``file:line`` of every key of a config file, nested keys dotted (``model_options.bk.d_model``)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                out[name] = f"{path}:{key.start_mark.line + 1}"
                walk(value, name + ".")
    walk(root, "")
    return out


def config_aliases() -> dict[str, str]:
    """Config keys spelled as a flag (``seq_len`` for ``--seq-len``, ``num_fewshot`` for lm-eval's
    ``--num_fewshot``) -> the option's key (``seq_lens``, ``fewshot``)."""
    out = {}
    for f in fields(RunRequest):
        for flag in filter(None, (f.metadata["flag"], *f.metadata["aliases"])):
            key = flag.lstrip("-").replace("-", "_")
            if key != f.name:
                out[key] = f.metadata["protocol"] or f.name
    return out


def _coerce(key: str, value: Any, where: str) -> Any:
    default = getattr(Protocol(), key)
    if isinstance(default, tuple):
        return tuple(value if isinstance(value, list) else [value])
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if default is not None and type(value) is not type(default):
        raise UsageError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
    return value


def build_request(config: str | Path | None, explicit: dict[str, Any], protocol: Protocol | None = None,
                  protocol_fields: dict[str, Any] | None = None
                  ) -> tuple[RunRequest, Protocol, dict[str, str]]:
    """The request and protocol of a run from a config file and explicit values (CLI or Python),
    with the one precedence rule above; also each config key's ``file:line``."""
    request = RunRequest.from_values(explicit)
    file_request, file_protocol, where = (read_config(config) if config is not None
                                          else (RunRequest(), {}, {}))
    unknown = sorted(set(protocol_fields or {}) - {f.name for f in dataclasses.fields(Protocol)})
    if unknown:
        known = sorted({f.name for f in fields(RunRequest)} | {f.name for f in dataclasses.fields(Protocol)})
        raise UsageError(f"mkeval.run: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    merged = request.merged_over(file_request)
    return merged, merged.protocol(protocol, file_protocol, protocol_fields), where


def cli_values(namespace: Any) -> dict[str, Any]:
    """The request options an argparse namespace holds (unset flags are None, store_true flags False)."""
    out = {}
    for f in fields(RunRequest):
        if f.metadata["flag"] is None:
            continue
        value = getattr(namespace, f.name, None)
        out[f.name] = None if value is False else value
    return out


def add_arguments(parser: Any, exclude: Sequence[str] = ()) -> None:
    """One argparse option per request field with a flag: its help shows the default."""
    for f in fields(RunRequest):
        flag = f.metadata["flag"]
        if flag is None or f.name in exclude:
            continue
        help_text = f"{f.metadata['help']} (default: {_default_text(f)})"
        names = [flag, *f.metadata["aliases"]]
        if f.metadata["kind"] == "bool":
            parser.add_argument(*names, dest=f.name, action="store_true", help=help_text)
        else:
            metavar = {"names": "A,B", "ints": "N,M", "int": "N", "float": "X", "path": "DIR"}.get(f.metadata["kind"])
            parser.add_argument(*names, dest=f.name, metavar=metavar or "VALUE", help=help_text)


def _default_text(f: dataclasses.Field) -> str:
    """What ``--help`` shows as a default: the field's stated text, else its protocol field's value in
    ``Protocol()`` itself (so the help cannot drift from the code)."""
    target = f.metadata["protocol"]
    if f.metadata["default_text"] is not None or not target:  # a stated text says more (eval_stride 0: seq_len)
        return f.metadata["default_text"]
    value = getattr(Protocol(), target)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_option(name: str, value: Any, where: str | None = None) -> Any:
    """One option's value parsed as ``mkeval run`` parses it (e.g. ``"128,512"`` for ``seq_lens``)."""
    f = {f.name: f for f in fields(RunRequest)}[name]
    return None if value is None else _parse(f, value, where or _label(f))
