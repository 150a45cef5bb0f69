"""The constant and tie rule: records that cannot show what a model learned, and the note that says so."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

TIE_SHARE = 0.5  # prompt scoring with more than this share of tied examples is a tie artefact


def _key(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def artefacts(records: Sequence[dict[str, Any]]) -> list[str]:
    """Why ``records`` cannot show what a model learned, to follow the model's name: it gives one
    prediction for every example, or most of its prompt scores are ties (the first option wins)."""
    why = []
    if len(records) > 1 and len({_key(r["prediction"]) for r in records}) == 1:
        why.append(f"predicts {records[0]['prediction']!r} for every example")
    tied = [bool(r["tie"]) for r in records if "tie" in r]
    if tied and sum(tied) > TIE_SHARE * len(tied):
        why.append(f"has {sum(tied)} of {len(tied)} examples tied between options (the first one wins)")
    return why


def _artefact_note(label: str, per_seed: Mapping[int | None, Sequence[dict[str, Any]]]) -> list[str]:
    """``artefacts`` of one model, its seeds with the same finding named together."""
    seeds_of: dict[str, list[Any]] = {}
    for s, records in per_seed.items():
        for why in artefacts(records):
            seeds_of.setdefault(why, []).append(s)
    out = []
    for why, seeds in seeds_of.items():
        if seeds == [None]:
            out.append(f"{label} {why}")
        else:
            out.append(f"{label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}) {why}")
    return out


_ARTEFACT_TAIL = " (so the scores reflect the labels, not learning)"
