"""mkeval: train, fine-tune and evaluate sequence-model architectures side by side under one protocol.

Names are imported lazily, so ``mkeval.report`` (which reads JSON only) starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MkevalError": "errors", "UsageError": "errors", "PluginError": "errors", "CellFailed": "errors",
    "hookimpl": "registry.hookspecs",
    "build_model": "engine.models", "count_parameters": "engine.models", "model_size_mb": "engine.models",
    "get_registry": "registry", "register": "registry", "register_plugin": "registry",
    "BenchmarkResult": "registry.contracts", "BenchmarkSpec": "registry.contracts", "DataRequest": "registry.contracts",
    "DatasetSpec": "registry.contracts", "LanguageModel": "registry.contracts", "LMData": "registry.contracts",
    "ModelSpec": "registry.contracts", "PrecisionSpec": "registry.contracts", "TaskSpec": "registry.contracts",
    "TokenSplit": "registry.contracts", "ReaderSpec": "registry.contracts", "GroupSpec": "registry.contracts",
    "Protocol": "protocol",
    "run": "runner.api", "RunResult": "runner.api",
    "CellResult": "results", "read_results": "results",
    "check_model": "engine.checks",
    "task_specs": "data.taskspec", "TaskConfig": "data.taskspec",
    "load_checkpoint": "engine.checkpoint", "write_checkpoint": "engine.checkpoint", "save_weights": "engine.checkpoint",
    "export_checkpoint": "interop.export", "lm_eval_model": "interop.lm_eval",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mkeval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


# transformers classes of plugins (bk's exported checkpoints): registered when transformers loads them
from .interop import hf_registration as _hf_registration  # noqa: E402

_hf_registration.install()
