"""Mamba-1 (Gu & Dao, 2023) as an mkeval model plugin, and the ``mamba-scan`` benchmark.

The model is ``mamba_ssm``'s language model (``model.py``). Its selective scan runs on
``mamba_ssm``'s fused CUDA kernels where they are installed and the tensors are on a GPU,
on a numba-compiled scan on the CPU (``compiled.py``), and on a pure-PyTorch O(L) chunked
scan everywhere else (``scan.py``; choose with ``MKEVAL_MAMBA_BACKEND``, see ``backend.py``).
``from_transformers`` and ``to_transformers`` move weights to and from ``transformers``'
``MambaForCausalLM``.
The scan is a ``torch.library`` custom op whose FLOP formulas the plugin registers
(``register_flop_formulas``; see ``docs/flops.md``). See ``docs/mamba.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import mkeval
from mkeval import BenchmarkSpec, ModelSpec, UsageError

from .backend import ENV_VAR, BackendUnavailable
from .bench import run_scan_benchmark
from .convert import from_transformers, to_transformers
from .model import MambaConfig, MambaLM
from .conv import FLOP_FORMULAS as CONV_FLOP_FORMULAS
from .scan import FLOP_FORMULAS

__all__ = [
    "ENV_VAR",
    "BackendUnavailable",
    "MambaConfig",
    "MambaLM",
    "build",
    "from_transformers",
    "run_scan_benchmark",
    "to_transformers",
]

# Non-embedding parameters: tiny 98k, small 0.93M, base 9.6M.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=64, n_layer=3),
    "small": dict(d_model=128, n_layer=8),
    "base": dict(d_model=384, n_layer=10),
}
_OPTIONS = sorted(f.name for f in dataclasses.fields(MambaConfig) if f.name != "vocab_size")


def build(vocab_size: int, max_seq_len: int, size: str | None = None, **options: Any) -> MambaLM:
    """A freshly initialised Mamba LM. Options are ``MambaConfig`` fields and override the size preset.

    ``max_seq_len`` is unused: Mamba has no positional table and no length limit.
    """
    size = size or "tiny"
    if size not in SIZES:
        raise UsageError(f"mamba has no size {size!r}; its sizes are {', '.join(SIZES)}")
    unknown = [k for k in options if k not in _OPTIONS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, _OPTIONS, n=1)
            hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
        raise UsageError(f"unknown mamba option {', '.join(hints)}. Options: {', '.join(_OPTIONS)}.")
    return MambaLM(MambaConfig(vocab_size=vocab_size, **{**SIZES[size], **options}))


@mkeval.hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="mamba",
            build=build,
            sizes=tuple(SIZES),
            default_size="tiny",
            size_knob="d_model",
            options=tuple(_OPTIONS),
            max_seq_len=None,
            description="Mamba-1 (mamba_ssm's LM): CUDA kernels, or an O(L) compiled or PyTorch scan (MKEVAL_MAMBA_BACKEND)",
            to_transformers=to_transformers,
        )
    )


@mkeval.hookimpl
def register_flop_formulas(register):
    for op, formula in {**FLOP_FORMULAS, **CONV_FLOP_FORMULAS}.items():
        register(op, formula)


@mkeval.hookimpl
def register_benchmarks(register):
    register(
        BenchmarkSpec(
            name="mamba-scan",
            run=run_scan_benchmark,
            description="Mamba training-step time: this plugin against transformers' MambaForCausalLM, same weights",
        )
    )
