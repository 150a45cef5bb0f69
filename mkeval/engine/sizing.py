"""Parameter matching: size every model to a reference model's non-embedding parameter count.

Works for any model plugin that declares a ``size_knob`` (an integer build option that grows
the non-embedding count monotonically): the knob is found by exponential search, then
bisection, on models built on the meta device (no memory, no initialisation cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CellFailed, UsageError
from .models import build_model, count_parameters
from ..registry.manager import Registry

TOLERANCE = 0.03


@dataclass(frozen=True)
class Match:
    reference: str
    target: int  # the reference's non-embedding parameters
    options: dict[str, Any]  # build options that hit it (the knob's value)
    params: int  # the matched model's non-embedding parameters

    @property
    def relative_difference(self) -> float:
        return self.params / self.target - 1


def non_embedding(name: str, vocab: int, seq_len: int, size: str | None, registry: Registry, **options: Any) -> int:
    with torch.device("meta"):
        model = build_model(name, vocab, seq_len, size=size, registry=registry, **options)
    return count_parameters(model).non_embedding


def match_params(name: str, reference: str, vocab: int, seq_len: int, size: str | None, reference_size: str | None,
                 registry: Registry, tolerance: float = TOLERANCE,
                 reference_options: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> Match:
    """The ``size_knob`` value of model ``name`` (built with its other ``options``) closest to
    ``reference``'s non-embedding count."""
    target = non_embedding(reference, vocab, seq_len, reference_size, registry, **(reference_options or {}))
    spec = registry.get("model", name)
    if name == reference:
        return Match(reference, target, {}, target)
    if spec.size_knob is None:
        raise UsageError(f"--match-params: model {name!r} declares no size_knob, so it cannot be sized to {reference!r}")
    knob = spec.size_knob
    cache: dict[int, int] = {}

    def count(value: int) -> int:
        if value not in cache:
            cache[value] = non_embedding(name, vocab, seq_len, size, registry, **{**(options or {}), knob: value})
        return cache[value]

    lo, hi = 1, 2
    while count(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            raise CellFailed(f"--match-params: {name!r} cannot reach {target:,} parameters with {knob} up to {hi:,}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda v: abs(count(v) - target))
    match = Match(reference, target, {knob: best}, count(best))
    if abs(match.relative_difference) > tolerance:
        raise CellFailed(
            f"--match-params: closest {name!r} ({knob}={best}) has {match.params:,} non-embedding parameters, "
            f"{100 * match.relative_difference:+.1f}% from {reference!r}'s {target:,} (tolerance {100 * tolerance:.0f}%)"
        )
    return match
