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
import statistics
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
    evaluated_checkpoint_of: str | None = None  # that training cell's name; None: this cell trained
    perplexity_delta: float | None = None  # test_perplexity minus the training cell's (same checkpoint)
    relative_perplexity_delta: float | None = None  # perplexity_delta / the training cell's test_perplexity
    quantization: dict[str, Any] | None = None  # what a post-training precision quantized, how, bytes
    status: str = "ok"
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CellResult":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


REQUIRED_FIELDS = tuple(f.name for f in fields(CellResult))


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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write text atomically, like ``write_json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finished_cells(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Finished per-cell results in ``directory`` keyed by cell hash; other JSON files are ignored."""
    found = {}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not (isinstance(data, dict) and data.get("status") == "ok" and isinstance(data.get("cell_hash"), str)):
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing or data.get("schema_version") != SCHEMA_VERSION:
            log.warning("%s looks like a result but %s; ignored", path,
                        f"lacks {', '.join(missing[:5])}" if missing else f"has schema {data.get('schema_version')!r}")
            continue
        found[data["cell_hash"]] = (path, data)
    return found


def read_results(directory: Path) -> list[CellResult]:
    """Every per-cell result in ``directory``, in file-name order."""
    return [CellResult.from_json(data) for _, data in sorted(finished_cells(directory).values(), key=lambda item: item[0])]


def multi_dataset_summary(model: str, results: list[CellResult], failures: dict[str, str],
                          failed_cells: int = 0) -> dict[str, Any]:
    """``{model}_multi_dataset.json``: test perplexity per dataset, then mean and std across datasets.

    A dataset with several cells (seq lens, precisions, seeds) reports their mean and lists them.
    The std across datasets is the population standard deviation (ddof = 0). When any cell of
    the model failed, the mean and std are null (``complete`` false): an average over whatever
    happened to succeed would not compare with a complete one.
    """
    per_dataset: dict[str, Any] = {}
    for r in results:
        entry = per_dataset.setdefault(r.dataset, {"cells": []})
        entry["cells"].append(
            {"seq_len": r.seq_len, "precision": r.precision, "seed": r.seed, "test_perplexity": r.test_perplexity}
        )
    for entry in per_dataset.values():
        entry["perplexity"] = statistics.fmean(c["test_perplexity"] for c in entry["cells"])
    values = [e["perplexity"] for e in per_dataset.values()]
    complete = failed_cells == 0 and bool(values)
    return {
        "model_name": model,
        "datasets": per_dataset,
        "mean_perplexity": statistics.fmean(values) if complete else None,
        "std_perplexity": statistics.pstdev(values) if complete else None,
        "num_datasets": len(values),
        "complete": complete,
        "failed_cells": failed_cells,
        "failed": failures,
    }


def _json_safe(value: Any) -> Any:
    """Non-finite floats (a diverged perplexity) become null, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
