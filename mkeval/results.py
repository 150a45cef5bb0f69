"""Result files: the per-cell JSON, the run summary and the multi-dataset file, written atomically.

Field names follow the pipeline mkeval replaces (``model_name``, ``final_perplexity`` ...);
``docs/results.md`` gives every field with its unit. This module imports no torch, so
reports start fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SUMMARY_FILE = "run_summary.json"


@dataclass
class CellResult:
    """One trained and evaluated cell (model x dataset x seq_len x precision x seed)."""

    # what was run
    model_name: str
    dataset: str
    seq_len: int
    bits: int
    precision: str
    seed: int
    # the original pipeline's numbers, all on held-out data except the losses
    final_loss: float  # mean training loss over the last eval interval, nats/token
    final_perplexity: float  # validation perplexity of the model after the last step
    best_perplexity: float  # lowest validation perplexity (the checkpoint kept)
    training_time: float  # seconds: optimiser steps plus periodic validation
    forward_flops: int  # per training step (one batch)
    backward_flops: int  # per training step
    total_flops: int  # (forward + backward) x optimiser steps
    peak_memory_mb: float  # MiB; see config.measurement.memory_method
    model_size_mb: float  # MiB of parameters and buffers in memory
    epoch_losses: list[float]  # mean training loss per eval interval, nats/token
    epoch_perplexities: list[float]  # validation perplexity at each evaluation
    config: dict[str, Any]  # everything needed to reproduce the cell
    # added by mkeval
    test_perplexity: float  # test perplexity of the best checkpoint (the headline number)
    test_loss: float  # nats/token, same evaluation
    test_accuracy: float  # next-token accuracy on the scored test targets
    test_tokens: int  # scored test targets
    test_word_perplexity: float | None  # exp(test NLL / words of the original text); whole test split only
    test_bits_per_byte: float | None  # test NLL / (UTF-8 bytes of the original text x ln 2); whole split only
    optimal_perplexity: float | None  # best achievable on this data, when the source is known
    perplexity_gap: float | None  # test_perplexity / optimal_perplexity - 1
    eval_steps: list[int]  # optimiser step of each evaluation
    best_step: int
    steps: int
    train_tokens: int  # tokens actually trained on
    tokens_per_second: float  # training tokens per second of optimiser-step time
    skipped_batches: int  # batches skipped for a non-finite loss
    total_params: int
    non_embedding_params: int
    protocol_hash: str
    cell_hash: str
    checkpoint: str  # path of the best checkpoint (safetensors), relative to the output dir
    versions: dict[str, str]
    device: dict[str, Any]
    git_revision: str | None
    created: str  # ISO 8601 UTC
    # precision sweeps: every precision after the first evaluates the first one's checkpoint
    trained_precision: str | None = None  # the precision the evaluated checkpoint was trained at
    precision_role: str = "trained"  # trained | post-training (quantized checkpoint) | evaluation-only (--evaluate-at)
    active_params_per_token: int | None = None  # non-embedding parameters acting on one token (MoE: routed experts)
    state_size: dict[str, int] | None = None  # floats carried between tokens: fixed (recurrent) and per_token (cache)
    size_matching: dict[str, Any] | None = None  # matched to a reference's non-embedding parameters, or why not
    evaluated_checkpoint_of: str | None = None  # that training cell's name; None: this cell trained
    perplexity_delta: float | None = None  # test_perplexity minus the training cell's (same checkpoint)
    relative_perplexity_delta: float | None = None  # perplexity_delta / the training cell's test_perplexity
    quantization: dict[str, Any] | None = None  # what a post-training precision quantized, how, bytes
    contract_checks: dict[str, Any] | None = None  # runtime contract checks of the model: name -> passed, detail
    flop_coverage: dict[str, Any] | None = None  # what the FLOP counts left out (docs/flops.md)
    marks: dict[str, str] = field(default_factory=dict)  # what a reader must know about these numbers
    vocabulary: dict[str, Any] | None = None  # tokenizer, the split it was fitted on, the test <unk> rate
    effective_context: dict[str, Any] | None = None  # the perturbation probe of the best checkpoint (mkeval.probes)
    status: str = "ok"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


REQUIRED_FIELDS = tuple(f.name for f in fields(CellResult) if f.default is MISSING and f.default_factory is MISSING)


@dataclass
class CellStatus:
    """One line of the run summary."""

    name: str
    cell_hash: str
    status: str  # ok | failed | resumed
    result_file: str | None = None
    error: str | None = None
    traceback_file: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # e.g. that an unreadable result file made the cell run again


TEMP_MARK = ".mkeval-"  # every temp file mkeval writes: ``.{name}.mkeval-{host}-{pid}-{random}.tmp``
STALE_FOREIGN_SECONDS = 24 * 3600  # a temp file from another host is removed only once this old


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(temp)`` fills a temp file in the same directory, which is
    fsynced and renamed over ``path``. A kill leaves either the old file or the new one, never half of
    one; the temp file carries mkeval's mark, host and pid, so a later run can remove it safely.
    The file gets the usual mode (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write text atomically (``atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write standard JSON atomically; non-finite floats become null."""
    write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files that killed mkeval processes left below ``directory``.

    Only mkeval's own pattern is touched. A file from this host is stale when its process is
    gone; one from another host (a shared filesystem) when it is older than a day, since its
    process cannot be asked. Returns what was removed.
    """
    removed = []
    host, now = socket.gethostname(), time.time()
    for path in Path(directory).rglob(f".*{TEMP_MARK}*.tmp"):
        match = re.search(re.escape(TEMP_MARK) + r"(.+)-(\d+)-[^-]*\.tmp$", path.name)
        if match is None or not path.is_file():
            continue
        owner, pid = match.group(1), int(match.group(2))
        try:
            stale = (not _pid_alive(pid)) if owner == host else now - path.stat().st_mtime > STALE_FOREIGN_SECONDS
            if stale:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its owner renamed or removed it meanwhile
            continue
    for path in removed:
        log.warning("removed %s, left behind by a killed run", path)
    return removed


@dataclass
class ResultScan:
    """What a results directory holds: finished cell results by cell hash, and the files that
    could not be read (path -> why). Older-schema results are listed apart: readable, not resumable."""

    finished: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    old_schema: dict[Path, str] = field(default_factory=dict)


def read_json_file(path: Path) -> tuple[Any, str | None]:
    """``(data, None)``, or ``(None, why)`` when the file is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def scan_results(directory: Path) -> ResultScan:
    """Every ``*.json`` at the top of ``directory``: finished cell results, and unreadable files."""
    scan = ResultScan()
    for path in sorted(Path(directory).glob("*.json")):
        data, why = read_json_file(path)
        if why is not None:
            scan.unreadable[path] = why
            continue
        if not (isinstance(data, dict) and "cell_hash" in data and "status" in data):
            continue  # a summary or another file mkeval writes
        if data.get("schema_version") != SCHEMA_VERSION:
            scan.old_schema[path] = f"schema {data.get('schema_version')!r}, this mkeval writes {SCHEMA_VERSION}"
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing or data.get("status") != "ok" or not isinstance(data.get("cell_hash"), str):
            scan.unreadable[path] = (f"a cell result without {', '.join(missing[:5])}" if missing
                                     else f"a cell result with status {data.get('status')!r}")
            continue
        scan.finished[data["cell_hash"]] = (path, data)
    return scan


def finished_cells(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Finished per-cell results in ``directory`` keyed by cell hash."""
    return scan_results(directory).finished


def read_results(directory: Path) -> list[CellResult]:
    """Every per-cell result in ``directory``, in file-name order."""
    return [CellResult.from_json(data) for _, data in sorted(finished_cells(directory).values(), key=lambda item: item[0])]


def json_safe(value: Any) -> Any:
    """Non-finite floats (a diverged perplexity) become null, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
