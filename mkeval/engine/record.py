"""What a cell's result records about itself besides its numbers: marks, vocabulary, size matching,
FLOP coverage, and what a post-training precision returned (checked)."""

from __future__ import annotations

import json
from typing import Any

import torch

from ..data.text import reads_test
from ..errors import PluginError
from ..registry import Registry
from ..registry.contracts import LMData
from .models import stored_bytes


MARKS = {
    "valid_is_train_text": "validation read the same text as training: the best checkpoint and the validation "
                           "perplexity were selected on training text",
    "test_contamination": "the test split was read for training or checkpoint selection "
                          "(--allow-test-contamination): the test perplexity is not held out",
    "size_not_matched": "parameters not matched to the run's reference model",
    "flops_incomplete": "ops with arithmetic and no FLOP formula ran (counted as 0)",
}
"""What a result can be marked with; reports show each mark where its number is (docs/results.md)."""


def cell_marks(data: LMData, split_map: dict[str, str], sizing: dict[str, Any], flops: Any) -> dict[str, str]:
    """The marks of a cell (``MARKS``), each with the detail that earned it."""
    marks = {}
    same = data.info.get("same_text") or []
    if "train" in same and "valid" in same:
        marks["valid_is_train_text"] = MARKS["valid_is_train_text"]
    contaminated = reads_test(split_map)
    if contaminated:
        marks["test_contamination"] = f"{MARKS['test_contamination']}: {', '.join(r + '=test' for r in contaminated)}"
    if sizing.get("reason"):
        marks["size_not_matched"] = sizing["reason"]
    if flops.uncounted:
        marks["flops_incomplete"] = f"{MARKS['flops_incomplete']}: {', '.join(sorted(flops.uncounted))}"
    return marks


def vocabulary(data: LMData) -> dict[str, Any] | None:
    """Which split the tokenizer was fitted on, and how much of the test split it cannot represent."""
    if data.tokenizer is None:
        return None
    test = data.splits["test"].info
    tokens, unk = test.get("tokens"), test.get("unk_tokens")
    return {"tokenizer": data.tokenizer.name, "fitted_on": data.info.get("vocabulary_fitted_on"),
            "test_unk_tokens": unk, "test_unk_rate": unk / tokens if tokens and unk is not None else None}


def size_matching(plan: Any, match: Any) -> dict[str, Any]:
    """How the cell's model was sized: matched to a reference's non-embedding count, or not and why."""
    if match is not None:
        return {"matched": True, "reference": match.reference, "reference_non_embedding_params": match.target,
                "relative_difference": match.relative_difference}
    return {"matched": plan.unmatched is None, "reference": None, "reason": plan.unmatched}


def quantize(registry: Registry, name: str, model: torch.nn.Module) -> dict[str, Any]:
    """Apply post-training precision ``name`` to ``model`` and check what its plugin returned.

    ``quantize(model)`` must return a dict (recorded as the result's ``quantization``); its
    optional ``bytes_after`` (bytes of the weights as stored) must be a non-negative integer and
    is measured here when the plugin does not give it.
    """
    entry = registry.entry("precision", name)
    where = f"precision {name!r} (plugin {entry.plugin!r}, {entry.distribution})"
    returned = entry.spec.quantize(model)
    if not isinstance(returned, dict):
        raise PluginError(f"{where}: quantize(model) returned {type(returned).__name__}; it must return a dict "
                          "describing what it did (see docs/plugins.md)")
    out = dict(returned)
    if "bytes_after" in out:
        value = out["bytes_after"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PluginError(f"{where}: quantize(model) returned bytes_after={value!r}; it must be the weights' "
                              "size in bytes, an integer >= 0 (or leave it out and mkeval measures it)")
    else:
        out["bytes_after"] = stored_bytes(model)
        out["bytes_after_measured_by"] = "mkeval"
    try:
        json.dumps(out, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: quantize(model) returned a dict that is not JSON data ({exc})") from None
    return out


def flop_coverage(flops: Any) -> dict[str, Any]:
    """What the step's FLOP count left out (``StepFlops``; docs/flops.md)."""
    return {"complete": not flops.uncounted, "uncounted_ops": flops.uncounted, "counted_by_op": flops.counted,
            "elementwise_elements_forward": flops.elementwise_elements_forward,
            "elementwise_elements_backward": flops.elementwise_elements_backward}
