"""The BK resolvent-diagonal op and its backends. Nothing here imports model code; only the
compiled backend imports mkeval (``mkeval.threads``, to share work among threads)."""

from .op import (
    BACKEND_ENV,
    BACKENDS,
    FLOP_FORMULAS,
    BackendUnavailable,
    backend_name,
    forced_backend,
    resolvent_diagonal,
    resolvent_diagonal_real,
)

__all__ = ["BACKENDS", "BACKEND_ENV", "FLOP_FORMULAS", "BackendUnavailable", "backend_name", "forced_backend", "resolvent_diagonal", "resolvent_diagonal_real"]
