"""An example third-party mkeval plugin: a model (``gru``), a dataset (``repeat``), and a benchmark
(``arith``: two toy tasks and the group's own aggregator, which ``mkeval report`` shows like GLUE's)."""

from pathlib import Path
from statistics import fmean

import torch
from torch import nn

import mkeval


class GRULanguageModel(nn.Module):
    """Embedding -> GRU -> tied output head. A GRU reads left to right, so it is causal."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.rnn = nn.GRU(d_model, d_model, num_layers=n_layer, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.rnn(self.embed(input_ids))[0])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(input_ids) @ self.embed.weight.T


SIZES = {"tiny": dict(d_model=64, n_layer=1), "small": dict(d_model=256, n_layer=2)}


def build(vocab_size, max_seq_len, size=None, **options):
    return GRULanguageModel(vocab_size, **{**SIZES[size or "tiny"], **options})


def load_repeat(request: mkeval.DataRequest) -> mkeval.LMData:
    """A random 16-token pattern repeated: learnable to perplexity ~1 once the pattern is seen."""
    gen = torch.Generator().manual_seed(request.seed)
    pattern = torch.randint(0, 16, (16,), generator=gen)
    sizes = {"train": request.train_tokens + request.seq_len + 1, "valid": 8193, "test": 8193}
    splits = {name: mkeval.TokenSplit(pattern.repeat(n // 16 + 1)[:n]) for name, n in sizes.items()}
    return mkeval.LMData(vocab_size=16, splits=splits, info={"pattern": pattern.tolist()})


@mkeval.hookimpl
def register_models(register):
    register(mkeval.ModelSpec(name="gru", build=build, sizes=tuple(SIZES), default_size="tiny",
                              size_knob="d_model", description="GRU language model (example plugin)"))


@mkeval.hookimpl
def register_datasets(register):
    register(mkeval.DatasetSpec(name="repeat", load=load_repeat, synthetic=True,
                                description="a repeated random pattern (example plugin)"))


TASKS = Path(__file__).resolve().parent / "tasks"


@mkeval.hookimpl
def register_tasks(register):
    for spec in mkeval.task_specs(TASKS):
        register(spec)


def aggregate_arith(results, specs):
    """The group's section of a unit's summary: the mean accuracy over the arith tasks that scored.

    ``results``: this unit's TaskResult per member task that ran; ``specs``: every member's spec.
    ``report_rows`` are what reports show (a row, its mode, metric and value)."""
    accuracies = {}
    for name, result in results.items():
        head = result.headline()  # (mode, metrics): fine-tuned if it ran, else the prompt mode with most shots
        if head is not None:
            accuracies[name] = head[1]["accuracy"]
    mean = fmean(accuracies.values()) if accuracies else None
    complete = set(accuracies) == set(specs)
    return {"accuracies": accuracies, "mean_accuracy": mean if complete else None, "complete": complete,
            "report_rows": [{"row": "(mean accuracy)", "mode": "", "metric": "accuracy",
                             "value": mean if complete else None}]}


@mkeval.hookimpl
def register_benchmark_groups(register):
    register(mkeval.GroupSpec(name="arith", aggregate=aggregate_arith,
                              description="arith: the mean accuracy of its tasks (example plugin)"))
