"""Building models from the registry, and counting what they hold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PluginError, UsageError, did_you_mean
from ..registry.manager import Registry, get_registry


def build_model(
    name: str,
    vocab_size: int,
    max_seq_len: int,
    size: str | None = None,
    seed: int | None = None,
    registry: Registry | None = None,
    **options: Any,
) -> nn.Module:
    """Build registered model ``name``; ``forward(LongTensor[B, N]) -> logits [B, N, vocab_size]``.

    ``seed`` (if given) seeds torch first, so the same seed gives the same weights.
    """
    spec = (registry or get_registry()).get("model", name, option="--models")
    if vocab_size <= 0:
        raise UsageError(f"vocab_size must be positive, got {vocab_size}")
    if max_seq_len <= 0:
        raise UsageError(f"max_seq_len must be positive, got {max_seq_len}")
    if spec.max_seq_len is not None and max_seq_len > spec.max_seq_len:
        raise UsageError(
            f"model {name!r} supports sequences up to {spec.max_seq_len} tokens; {max_seq_len} was asked for"
        )
    if size is None:
        size = spec.default_size
    if spec.sizes and size is not None and size not in spec.sizes:
        raise UsageError(f"model {name!r} has no size {size!r}; its sizes are {', '.join(spec.sizes)}")
    if seed is not None:
        torch.manual_seed(seed)
    model = spec.build(vocab_size=vocab_size, max_seq_len=max_seq_len, size=size, **options)
    if not isinstance(model, nn.Module):
        raise PluginError(f"model plugin {name!r}: build() returned {type(model).__name__}, not an nn.Module")
    return model


def check_model_options(name: str, size: str | None, options: dict[str, Any], where: str,
                        registry: Registry | None = None) -> None:
    """Bad input if ``options`` are not build options of model ``name`` (before any work is done).

    Names are checked against the plugin's declared ``options``; values by building the model on
    the meta device (no memory), so a plugin's own validation speaks. ``where`` says where the
    options came from (e.g. ``run.yaml:7``).
    """

    spec = (registry or get_registry()).get("model", name)
    if not isinstance(options, dict):
        raise UsageError(f"{where}: the options of model {name!r} must be a mapping, got {options!r}")
    if spec.options is not None:
        for key in options:
            if key not in spec.options:
                hint = did_you_mean(key, list(spec.options))
                raise UsageError(f"{where}: model {name!r} has no option {key!r}{hint} Its options: "
                                 f"{', '.join(spec.options) or 'none'}")
    try:
        with torch.device("meta"):
            build_model(name, 8, 16, size=size, registry=registry, **options)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    except TypeError as exc:  # build(**options) with a keyword it does not take
        if "argument" in str(exc):
            raise UsageError(f"{where}: model {name!r} does not accept these options ({exc})") from None
    except Exception:  # noqa: BLE001 - a build that needs real memory: the cell itself will say
        pass


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    active: int | None = None  # non-embedding parameters that act on one token (None: all of them)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active_per_token(self) -> int:
        return self.non_embedding if self.active is None else self.active


def count_parameters(model: nn.Module) -> ParamCounts:
    """Unique parameters, those in ``nn.Embedding`` modules (token and position tables), and the
    non-embedding ones that act on one token (``model.active_parameters()`` when the model has
    it, e.g. a mixture of experts; else every non-embedding parameter).

    Tied weights are counted once; an output head tied to the embedding counts as embedding.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields shared tensors once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = 0
    emb_seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in emb_seen:
            emb_seen.add(id(module.weight))
            embedding += module.weight.numel()
    active = int(model.active_parameters()) if callable(getattr(model, "active_parameters", None)) else None
    return ParamCounts(total=total, embedding=embedding, active=active)


def recurrent_state(model: nn.Module) -> dict[str, int] | None:
    """The state the model carries from token to token at inference, in numbers (floats) per
    sequence: ``fixed`` (a recurrent state) and ``per_token`` (a cache growing with the context,
    e.g. attention's keys and values); None when the model does not say (``recurrent_state()``)."""
    method = getattr(model, "recurrent_state", None)
    if not callable(method):
        return None
    state = dict(method())
    return {"fixed": int(state.get("fixed", 0)), "per_token": int(state.get("per_token", 0))}


def model_size_mb(model: nn.Module) -> float:
    """In-memory size of parameters and buffers, in MiB (2**20 bytes), shared storage counted once."""
    seen: set[tuple[int, int]] = set()
    nbytes = 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        nbytes += t.untyped_storage().nbytes()
    return nbytes / 2**20


def stored_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored, counting a tensor subclass's inner tensors
    (a quantized weight is its int8/int4 values plus scales, not the float tensor it stands for)."""
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        inner = t.__tensor_flatten__()[0] if hasattr(t, "__tensor_flatten__") else None
        if inner:
            total += sum(getattr(t, a).numel() * getattr(t, a).element_size() for a in inner
                         if isinstance(getattr(t, a), torch.Tensor))
        else:
            total += t.numel() * t.element_size()
    return total
