"""The language-modelling tables: one row per model, dataset, length, training and evaluation precision.

Each cell's numbers are summarised over seeds (mean ± sample std, n; ``mkeval.results.aggregate``);
a column is a header and how to write a summary as its cell (``Column``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable

from ..results import CellResult
from ..results.aggregate import LMSummary, seed_stats
from .formatting import _num, _plain, _stats
from .marks import MARK_COLUMN, MARK_SYMBOLS


def _marks(cells: list[CellResult], column: str) -> str:
    found = {k for r in cells for k in (r.marks or {})}
    return "".join(MARK_SYMBOLS[k] for k in MARK_SYMBOLS if k in found and MARK_COLUMN[k] == column)


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[LMSummary], str]  # the table cell
    value: Callable[[LMSummary], Any] | None = None  # the CSV value (None: the text)


def _first(s: LMSummary) -> CellResult:
    return s.cells[0]


def _trained(s: LMSummary) -> bool:
    return _first(s).precision_role == "trained"


def _spread(s: LMSummary, name: str, text: Callable[[float], str]) -> str:
    """``_stats`` for a number outside ``LM_NUMBERS`` (mean ± sample std over seeds), in ``text``'s format."""
    st = seed_stats([getattr(r, name) for r in s.cells])
    return "" if st.mean is None else text(st.mean) + (f" ± {text(st.std)}" if st.std is not None else "")


def _count(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else ""


def _params(s: LMSummary) -> str:
    return _count(_first(s).non_embedding_params) + _marks(s.cells, "params")


def _active(s: LMSummary) -> str:
    r = _first(s)
    return "" if r.active_params_per_token in (None, r.non_embedding_params) else _count(r.active_params_per_token)


def _gflops(s: LMSummary) -> str:
    r = _first(s)
    if not _trained(s) or r.forward_flops is None or r.backward_flops is None:
        return ""
    return _num((r.forward_flops + r.backward_flops) / 1e9, 3) + _marks(s.cells, "GFLOP/step")


def _state(s: LMSummary) -> str:
    state = _first(s).state_size
    if not state:
        return ""
    fixed, per_token = state.get("fixed", 0), state.get("per_token", 0)
    return " + ".join(p for p in (f"{fixed:,}" if fixed else "", f"{per_token:,}/tok" if per_token else "") if p) or "0"


def memory_header(results: list[CellResult]) -> str:
    """Peak process RSS on a CPU and peak CUDA allocation on a GPU are different things: say which."""
    methods = {(r.config.get("measurement") or {}).get("memory_method") for r in results}
    if methods == {"cuda_max_allocated"}:
        return "peak CUDA MiB"
    if methods == {"cpu_peak_rss_sampled"}:
        return "peak RSS MiB"
    return "peak MiB"


KEYS = [
    Column("model", lambda s: s.model_name),
    Column("dataset", lambda s: s.dataset),
    Column("seq", lambda s: str(s.seq_len)),
    Column("trained at", lambda s: s.trained_at),
    Column("eval at", lambda s: s.evaluated_at if s.evaluated_at != s.trained_at else "="),
]
"""What a row is (``lm_group_key``): the first columns of both tables, repeated when a table is split."""

QUALITY = KEYS + [
    # seeds behind the test perplexity; k/n when some seed's was not finite (the mean is over k)
    Column("n", lambda s: str(len(s.cells)) if s.numbers["test_perplexity"].n == len(s.cells)
           else f"{s.numbers['test_perplexity'].n}/{len(s.cells)}"),
    Column("test ppl", lambda s: _stats(s.numbers["test_perplexity"]) + _marks(s.cells, "test ppl")),
    Column("val ppl", lambda s: _stats(s.numbers["best_perplexity"]) + _marks(s.cells, "val ppl")),
    Column("word ppl", lambda s: _stats(s.numbers["test_word_perplexity"], 2)),
    Column("bpb", lambda s: _stats(s.numbers["test_bits_per_byte"], 4)),
    Column("gap", lambda s: _stats(s.numbers["perplexity_gap"], pct=True)),
    Column("Δppl", lambda s: _stats(s.numbers["relative_perplexity_delta"], pct=True)),
]
"""Quality over seeds; Δppl is relative to the same checkpoint at the precision it was trained at."""

COST = KEYS + [
    Column("params", _params),
    Column("active", _active),
    Column("state", _state),
    Column("weights MiB", lambda s: _num(_first(s).model_size_mb, 2)),
    # an evaluation-only row's peak is of evaluation, not training: not comparable with the rows above it
    Column("peak MiB", lambda s: _spread(s, "peak_memory_mb", lambda v: _num(v, 0)) if _trained(s) else ""),
    # an evaluation-only row did not train: its training numbers are its training cell's
    Column("tok/s", lambda s: _spread(s, "tokens_per_second", _count) if _trained(s) else ""),
    Column("train s", lambda s: _spread(s, "training_time", lambda v: _num(v, 1)) if _trained(s) else ""),
    Column("GFLOP/step", _gflops),
]
"""Size and cost; params are non-embedding (active: acting on one token); state: floats carried between tokens."""

CELL_CSV = ["model_name", "dataset", "seq_len", "trained_precision", "precision", "precision_role", "seed",
            "test_perplexity", "best_perplexity", "final_perplexity", "test_word_perplexity", "test_bits_per_byte",
            "test_accuracy", "optimal_perplexity", "perplexity_gap", "relative_perplexity_delta", "total_params",
            "non_embedding_params", "active_params_per_token", "model_size_mb", "peak_memory_mb",
            "tokens_per_second", "training_time", "forward_flops", "backward_flops", "steps", "train_tokens"]


def _pruned(title: str, columns: list[Column], rows: list[LMSummary]) -> tuple[str, list[str], list[list[str]]]:
    """The table without the columns that are empty on every row (e.g. word ppl on synthetic data)."""
    cells = [[c.text(s) for c in columns] for s in rows]
    keep = [i for i, c in enumerate(columns) if i < 4 or any(row[i] not in ("", "=") for row in cells)]
    return title, [columns[i].header for i in keep], [[row[i] for i in keep] for row in cells]


def seeds_csv(summaries: list[LMSummary]) -> str:
    """Language-modelling numbers over seeds, long format: mean, sample std, n and the 95% t-interval."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "dataset", "seq_len", "trained_at", "evaluated_at", "number", "mean", "std", "n",
                     "ci95_low", "ci95_high", "seeds"])
    for s in summaries:
        for name, st in s.numbers.items():
            if st.n:
                writer.writerow([s.model_name, s.dataset, s.seq_len, s.trained_at, s.evaluated_at, name, st.mean,
                                 _plain(st.std), st.n, _plain(st.low), _plain(st.high), " ".join(map(str, st.seeds))])
    return buf.getvalue()
