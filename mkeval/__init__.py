"""mkeval: train, fine-tune and evaluate sequence-model architectures side by side under one protocol.

Names are imported lazily, so ``mkeval.report`` (which reads JSON only) starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MkevalError": "errors", "UsageError": "errors", "PluginError": "errors", "CellFailed": "errors",
    "hookimpl": "hookspecs",
    "build_model": "models", "count_parameters": "models", "model_size_mb": "models",
    "get_registry": "registry", "register": "registry", "register_plugin": "registry",
    "BenchmarkResult": "specs", "BenchmarkSpec": "specs", "DataRequest": "specs", "DatasetSpec": "specs",
    "LanguageModel": "specs", "LMData": "specs", "ModelSpec": "specs", "PrecisionSpec": "specs",
    "TaskSpec": "specs", "TokenSplit": "specs",
    "Protocol": "protocol",
    "run": "runner", "RunResult": "runner",
    "CellResult": "results", "read_results": "results",
    "check_model": "checks",
    "task_specs": "taskspec", "TaskConfig": "taskspec",
    "load_checkpoint": "checkpoint", "write_checkpoint": "checkpoint", "save_weights": "checkpoint",
    "export_checkpoint": "export", "lm_eval_model": "lm_eval_adapter",
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
from . import hf_registration as _hf_registration  # noqa: E402

_hf_registration.install()
