"""Weight-only post-training quantization with torchao: ``int8``, ``int4`` and ``int4-packed``.

A quantized precision never trains: it takes a trained checkpoint, quantizes a copy of every
``nn.Linear`` weight (except the layers a model names in ``no_quantize()``) and evaluates
that copy with full-precision activations. What was quantized, how, and the real in-memory
size are returned for the result file.

- ``int8``: ``Int8WeightOnlyConfig``, symmetric per output channel.
- ``int4``: ``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group))``:
  4-bit values (-8..7) with one scale per group of ``group`` input columns. torchao stores
  the values unpacked, one per int8 byte, so the weights take about as much memory as
  ``int8``'s plus the group scales; the values, not the storage, are 4-bit. It runs anywhere.
- ``int4-packed``: ``Int4WeightOnlyConfig`` (two values per byte, tinygemm layout); its kernels
  need CUDA and bfloat16, so it is refused on other devices before anything trains.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mkeval.engine.models import stored_bytes

INT4_GROUP = 32


class _QuietKernelLoads(logging.Filter):
    """torchao logs a warning for each CUDA extension it cannot load on a CPU-only machine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load")


class _QuietEnumConstants(logging.Filter):
    """torch warns at torchao's import that its enum registration is deprecated; not ours to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "register_constant() on Enum" not in record.getMessage()


logging.getLogger("torchao").addFilter(_QuietKernelLoads())
logging.getLogger("torch.utils._pytree").addFilter(_QuietEnumConstants())


def torchao_missing() -> str | None:
    try:
        import torchao  # noqa: F401 - only whether it imports
    except ImportError as exc:
        return f"torchao is not importable ({exc}); pip install torchao"
    return None


def _config(name: str) -> tuple[Any, dict[str, Any]]:
    import torchao.quantization as q
    from torchao.quantization.granularity import PerGroup

    if name == "int8":
        return q.Int8WeightOnlyConfig(), {"scheme": "symmetric per output channel", "group_size": None}
    if name == "int4":
        return (q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP)),
                {"scheme": "per group of input columns", "group_size": INT4_GROUP, "storage": "one int4 value per int8"})
    return (q.Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d"),
            {"scheme": "asymmetric per group (tinygemm)", "group_size": INT4_GROUP, "storage": "two int4 values per byte"})


def quantizable(model: nn.Module, name: str) -> tuple[list[str], dict[str, str]]:
    """Linear layers to quantize, and those left in high precision with the reason."""
    marked = set(model.no_quantize()) if hasattr(model, "no_quantize") else set()
    owners: dict[int, list[str]] = {}  # a weight shared by several modules (a head tied to the embedding)
    for fqn, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{fqn}.{pname}" if fqn else pname)
    chosen, kept = [], {}
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        shared = [o for o in owners[id(module.weight)] if o != f"{fqn}.weight"]
        if fqn in marked:
            kept[fqn] = "the model marks it as not quantizable (no_quantize)"
        elif shared:
            kept[fqn] = f"its weight is shared with {', '.join(shared)} (tied), which is not a linear layer"
        elif name != "int8" and module.in_features % INT4_GROUP:
            kept[fqn] = f"in_features {module.in_features} is not a multiple of the group size {INT4_GROUP}"
        else:
            chosen.append(fqn)
    return chosen, kept


def quantize(name: str, model: nn.Module) -> dict[str, Any]:
    """Quantize ``model`` in place; returns what was done, for the result file."""
    from torchao.quantization import quantize_

    chosen, kept = quantizable(model, name)
    before = stored_bytes(model)
    config, info = _config(name)
    if name == "int4-packed":
        model.to(torch.bfloat16)
    targets = set(chosen)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in targets)
    layers = {}
    for fqn in chosen:
        w = model.get_submodule(fqn).weight
        inner = w.__tensor_flatten__()[0] if hasattr(w, "__tensor_flatten__") else []
        layers[fqn] = {"tensor": type(w).__name__, "shape": list(w.shape),
                       "inner": {a: str(getattr(w, a).dtype).replace("torch.", "") for a in inner
                                 if isinstance(getattr(w, a), torch.Tensor)}}
    import torchao

    return {"library": f"torchao {torchao.__version__}", "config": type(config).__name__, "weight_only": True,
            **info, "quantized_layers": layers, "kept_high_precision": kept,
            "bytes_before": before, "bytes_after": stored_bytes(model)}


def unsupported(name: str):
    def check(device: torch.device) -> str | None:
        missing = torchao_missing()
        if missing:
            return missing
        if name == "int4-packed" and device.type != "cuda":
            return (f"int4-packed needs torchao's CUDA int4 kernels and bfloat16, and the device is {device}; "
                    "use --precisions int4 (4-bit values in int8 storage, runs on CPU)")
        return None
    return check
