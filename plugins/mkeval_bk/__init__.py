"""ResNet-BK for mkeval: the ``bk`` model, the resolvent-diagonal op it mixes tokens with,
and the ``bk-core`` benchmark of that op. See ``docs/bk.md``.

``hf.py`` holds its ``transformers`` classes; importing mkeval (which this plugin does) registers
them with ``AutoModelForCausalLM`` as soon as ``transformers`` loads its auto classes, through
this distribution's ``mkeval.transformers`` entry point."""

from __future__ import annotations

import mkeval

from .model import OPTIONS, PRESETS, BKConfig, BKLanguageModel, build
from .ops import (
    BACKENDS,
    FLOP_FORMULAS,
    BackendUnavailable,
    backend_name,
    forced_backend,
    resolvent_diagonal,
    resolvent_diagonal_real,
)

__all__ = [
    "BACKENDS",
    "BKConfig",
    "BackendUnavailable",
    "BKLanguageModel",
    "backend_name",
    "build",
    "forced_backend",
    "resolvent_diagonal",
    "resolvent_diagonal_real",
]


def to_transformers(model: BKLanguageModel):
    """A ``transformers`` ``BKForCausalLM`` (``hf.py``) holding ``model``'s weights."""
    from .hf import to_transformers as convert

    return convert(model)


@mkeval.hookimpl
def register_models(register):
    register(
        mkeval.ModelSpec(
            name="bk",
            build=build,
            sizes=tuple(PRESETS),
            default_size="tiny",
            size_knob="d_model",
            options=OPTIONS,
            max_seq_len=None,
            description="ResNet-BK: tridiagonal-resolvent token mixing (causal BK recursion) and top-k MoE",
            to_transformers=to_transformers,
        )
    )


@mkeval.hookimpl
def register_flop_formulas(register):
    for op, formula in FLOP_FORMULAS.items():
        register(op, formula)


@mkeval.hookimpl
def register_benchmarks(register):
    from .bench import run

    register(
        mkeval.BenchmarkSpec(
            name="bk-core",
            run=run,
            description="BK resolvent diagonal: forward and forward+backward per backend vs a per-position loop",
        )
    )
