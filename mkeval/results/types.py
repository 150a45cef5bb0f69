"""The types of the files mkeval writes; ``docs/results.md`` gives every field with its unit.

Field names of the per-cell result follow the pipeline mkeval replaces (``model_name``,
``final_perplexity`` ...). This package imports no torch, so reports start fast.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 2
SUMMARY_FILE = "run_summary.json"
SHARD_SUMMARY_GLOB = "run_summary.shard-*-of-*.json"  # one per --shard process (docs/distributed.md)


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
    effective_context: dict[str, Any] | None = None  # the perturbation probe of the best checkpoint (mkeval.engine.probes)
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
    """One line of the run summary: a job (``name``, its hash in ``cell_hash``) and how it ended."""

    name: str
    cell_hash: str
    status: str  # ok | failed | resumed
    result_file: str | None = None
    error: str | None = None
    traceback_file: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # e.g. that an unreadable result file made the cell run again
    kind: str = "train"  # the job: train | precision_eval | task


def json_safe(value: Any) -> Any:
    """Non-finite floats (a diverged perplexity) become null, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
