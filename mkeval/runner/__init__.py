"""The run: a request (``request.RunRequest``), its plan of typed jobs (``plan``), and the executor
that runs them (``executor``); ``api.run`` ties them together.

Names are imported lazily: the CLI reads ``RunRequest`` to build its options without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"run": "api", "RunResult": "api", "data_request": "executor", "RunRequest": "request"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mkeval.runner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
