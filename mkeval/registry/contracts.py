"""The four plugin contracts: what a model, dataset, precision or task plugin registers.

Each spec is a frozen dataclass; the objects a spec's callables return meet the
small ``typing.Protocol`` contracts below. ``docs/plugins.md`` explains them with
examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn


# --------------------------------------------------------------------------- models
@runtime_checkable
class LanguageModel(Protocol):
    """What ``ModelSpec.build`` returns (an ``nn.Module``).

    Optional extras the engine uses when present:
    ``no_weight_decay() -> set[str]`` names parameters to exclude from weight decay
    (norms, biases and embeddings are always excluded); ``auxiliary_loss() -> Tensor | None``
    returns a loss from the latest forward (e.g. MoE load balancing) that training adds
    to the LM loss and evaluation ignores.
    """

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, N]`` -> logits ``[B, N, V]``; position t depends only on tokens 0..t."""
        ...

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, N]`` -> final hidden states ``[B, N, D]`` (what task heads read)."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A model architecture.

    ``build(vocab_size, max_seq_len, size=None, **options) -> nn.Module`` builds a fresh,
    randomly initialised model (the caller seeds torch first). ``sizes`` lists the accepted
    ``size`` presets, ``default_size`` the one used when none is asked for. ``size_knob``
    names an integer option that grows the non-embedding parameter count monotonically
    (used to match parameter counts across models). ``max_seq_len`` is the longest
    sequence the architecture supports (None: no limit). ``to_transformers(model) ->
    transformers.PreTrainedModel`` (optional) converts a built model, weights included, to a
    ``transformers`` model whose logits are the same (``mkeval export --format hf``).
    ``options`` names every build option ``build`` accepts, so that a misspelt option in a
    config file is reported (with its file and line) before anything runs.
    """

    name: str
    build: Callable[..., nn.Module]
    sizes: tuple[str, ...] = ()
    default_size: str | None = None
    size_knob: str | None = None
    max_seq_len: int | None = None
    description: str = ""
    to_transformers: Callable[[nn.Module], Any] | None = None
    options: tuple[str, ...] | None = None  # build options the model accepts (checked before any work); None: unknown


# --------------------------------------------------------------------------- datasets
@dataclass
class TokenSplit:
    """One split as token ids.

    ``tokens`` is either a 1-D stream (evaluated in windows of ``seq_len + 1`` with stride
    ``seq_len``, so every token after the first is predicted once) or a 2-D ``[M, L]`` block
    of independent examples (each example is one window). ``loss_mask`` has the shape of
    ``tokens``; True marks tokens that are scored as targets (None: all are). ``info`` holds
    split statistics that go into results (e.g. words and bytes of the original text).
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class LMData:
    """What ``DatasetSpec.load`` returns.

    ``optimal_perplexity`` is the lowest perplexity any model can reach on the scored
    tokens when the source is known exactly (synthetic data), else None. ``info`` is
    recorded in every result built on this data. ``tokenizer`` (a ``mkeval.data.tokenizers.Tokenizer``,
    text datasets only) is what downstream tasks use to read text after pretraining.
    """

    vocab_size: int
    splits: dict[str, TokenSplit]
    optimal_perplexity: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None


@dataclass(frozen=True)
class DataRequest:
    """What the runner asks a dataset for.

    ``seq_len`` lets example-based sources generate examples of exactly ``seq_len + 1``
    tokens; ``train_tokens`` is the training budget (a source may generate, or stream, just
    enough); ``eval_tokens`` the most valid/test tokens the run scores (0: whole splits);
    ``seed`` fixes the data itself (identical for every model and training seed).
    ``tokenizer`` and ``split_map`` (role -> split read, e.g. ``{"train": "valid"}``) apply
    to text datasets; ``data_dir`` is the root of local files (one folder per dataset).
    """

    seq_len: int
    train_tokens: int
    seed: int = 1234
    data_dir: Path | None = None
    tokenizer: str = "word"
    split_map: Mapping[str, str] = field(default_factory=dict)
    eval_tokens: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A language-modelling dataset: ``load(DataRequest) -> LMData``."""

    name: str
    load: Callable[[DataRequest], LMData]
    synthetic: bool = False
    description: str = ""
    maps_splits: bool = False  # load() applies request.split_map itself; else the core remaps the loaded splits


# --------------------------------------------------------------------------- precisions
@dataclass(frozen=True)
class PrecisionSpec:
    """A numeric precision for training and evaluation.

    ``autocast_dtype`` (None: plain fp32) is used under ``torch.autocast`` for both
    training and evaluation; ``grad_scaling`` turns on dynamic loss scaling where the
    device needs it (CUDA). ``unsupported(device) -> str | None`` returns why the precision
    cannot run on a device, checked before any training starts.

    ``quantize(model) -> dict`` makes it a post-training precision: it never trains; the
    runner hands it a copy of a checkpoint trained at the run's training precision, which it
    quantizes in place (returning what it did, recorded in the result), and evaluates that.
    """

    name: str
    bits: int
    autocast_dtype: torch.dtype | None = None
    grad_scaling: bool = False
    unsupported: Callable[[torch.device], str | None] | None = None
    description: str = ""
    quantize: Callable[[nn.Module], dict[str, Any]] | None = None


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSpec:
    """A downstream task. ``groups`` are the benchmark names that select it (e.g. ``glue``).

    ``spec`` is the task's definition, a ``mkeval.taskspec.TaskConfig`` (what a ``tasks/*.yaml``
    file holds); ``mkeval.task_specs(folder)`` builds these from a folder of spec files.
    """

    name: str
    groups: tuple[str, ...] = ()
    spec: Any = None
    description: str = ""


# --------------------------------------------------------------------------- task readers and groups
@dataclass(frozen=True)
class ReaderSpec:
    """A task data format, named by task specs in ``local: [{format: NAME, ...}]``.

    ``read(path) -> Iterator[(where, row)]`` yields each example of one file: ``where`` names it
    (``file:line``, or the place in a nested file) and ``row`` is a dict of its fields; an example
    that cannot be read is yielded as ``{"__error__": "where: what is wrong"}`` (a bad row:
    an error, or counted with ``--skip-bad-rows``). A file with no example at all is bad input.
    The core reads ``tsv``, ``csv`` and ``jsonl`` itself; SQuAD's, MultiRC's and ReCoRD's files come
    from the tasks plugin through this hook.
    """

    name: str
    read: Callable[[Path], Any]
    description: str = ""


@dataclass(frozen=True)
class GroupSpec:
    """A benchmark group (``glue``, ``mmlu``, a plugin's own): how a unit's results on the group's
    tasks are summarised.

    ``aggregate(results, specs) -> dict`` receives the unit's ``TaskResult`` of every member task
    that ran (``mkeval.results.downstream``) and their ``TaskConfig`` by name; it returns the
    group's section of ``{unit}_downstream.json`` (any JSON data), which must hold ``report_rows``:
    a list of ``{"row": str, "mode": str, "metric": str, "value": float | None}`` that reports show
    (a row may add ``"chart": NAME``: the rows of one chart are drawn together, one panel per mode,
    as ``{group}_{NAME}.png``). ``pool`` says whether a
    comparison of two models pools the group's tasks (their examples scored by plain accuracy) into
    one test, as for MMLU's subjects. Tasks of no aggregated group are reported under ``other``.
    """

    name: str
    aggregate: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    pool: bool = False
    description: str = ""


# --------------------------------------------------------------------------- benchmarks
@dataclass
class BenchmarkResult:
    """What a benchmark measured: one row per configuration, ratios computed within the run."""

    rows: list[dict[str, Any]]
    columns: list[str]
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    plot: Callable[["BenchmarkResult", Path], None] | None = None  # draws the figure (PNG) at a path


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark behind ``mkeval bench NAME``.

    ``run(seq_lens=None, batch_size=None, models=None, repeats=None, device=None) -> BenchmarkResult``;
    each argument is None when the user did not give it, and the benchmark uses its own default.
    """

    name: str
    run: Callable[..., BenchmarkResult]
    description: str = ""


KINDS: dict[str, type] = {
    "model": ModelSpec,
    "dataset": DatasetSpec,
    "precision": PrecisionSpec,
    "task": TaskSpec,
    "benchmark": BenchmarkSpec,
    "reader": ReaderSpec,
    "group": GroupSpec,
}
