"""The model contract checks behind ``mkeval check``; the test suite runs the same on every built-in model."""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import safetensors.torch
import torch
from torch import nn

from ..errors import CellFailed, UsageError
from .models import build_model
from ..registry.manager import Registry, get_registry


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


def check_shape(model: nn.Module, ids: torch.Tensor, vocab_size: int) -> str:
    """Logits ``[B, N, V]`` and hidden states ``[B, N, D]``, all finite."""
    batch_size, seq_len = ids.shape
    with torch.no_grad():
        logits = model(ids)
        hidden = model.hidden_states(ids)
    assert tuple(logits.shape) == (batch_size, seq_len, vocab_size), \
        f"logits shape {tuple(logits.shape)}, expected {(batch_size, seq_len, vocab_size)}"
    assert hidden.dim() == 3 and tuple(hidden.shape[:2]) == (batch_size, seq_len), \
        f"hidden_states shape {tuple(hidden.shape)}, expected ({batch_size}, {seq_len}, D)"
    assert torch.isfinite(logits).all(), "logits contain non-finite values"
    return f"logits {tuple(logits.shape)}, hidden states {tuple(hidden.shape)}"


def check_causality(model: nn.Module, ids: torch.Tensor, vocab_size: int) -> str:
    """Changing token t leaves every logit before t bit-identical, and changes some logit at or after t."""
    seq_len = ids.shape[1]
    with torch.no_grad():
        base = model(ids)
        for t in sorted({1, seq_len // 2, seq_len - 1}):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % vocab_size
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), \
                f"changing token {t} changed logits at earlier positions (max diff " \
                f"{(out[:, :t] - base[:, :t]).abs().max().item():.3g}): the model sees the future"
            assert not torch.equal(out[:, t:], base[:, t:]), f"changing token {t} changed no logits at all"
    return "logits before t are bit-identical when token t changes"


def check_eval_determinism(model: nn.Module, ids: torch.Tensor) -> str:
    """The same input twice in eval mode gives bit-identical logits (so evaluations are reproducible)."""
    with torch.no_grad():
        first, second = model(ids), model(ids)
    assert torch.equal(first, second), \
        f"the same input gave different logits in eval mode (max diff {(first - second).abs().max().item():.3g})"
    return "the same input gives bit-identical logits in eval mode"


def _run(label: str, fn: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(label, True, fn())
    except AssertionError as exc:
        return CheckResult(label, False, str(exc))
    except Exception as exc:  # a crash is a failed check, with its reason
        return CheckResult(label, False, f"{type(exc).__name__}: {exc}")


RUNTIME_CHECKS = ("shape", "causality", "eval_determinism")


def runtime_checks(model: nn.Module, vocab_size: int, seq_len: int, device: torch.device,
                   batch_size: int = 2) -> list[CheckResult]:
    """The cheap contract checks the runner runs once per model and configuration, before its
    first cell: output shape, causality and determinism under eval, on ``model`` as built for the
    cell (its own copy, left in eval mode). Random ids come from a private generator."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, max(2, seq_len)), generator=gen).to(device)
    model.eval()
    return [_run("shape", lambda: check_shape(model, ids, vocab_size)),
            _run("causality", lambda: check_causality(model, ids, vocab_size)),
            _run("eval_determinism", lambda: check_eval_determinism(model, ids))]


def check_model(
    name: str,
    vocab_size: int = 37,
    seq_len: int = 24,
    batch_size: int = 2,
    size: str | None = None,
    registry: Registry | None = None,
    **options,
) -> list[CheckResult]:
    """Run every contract check on model ``name``; each check reports pass/fail with a reason."""

    if vocab_size < 2 or seq_len < 2 or batch_size < 1:
        raise UsageError(f"check: needs vocab_size >= 2 and seq_len >= 2 (got {vocab_size}, {seq_len})")
    (registry or get_registry()).get("model", name, option="mkeval check MODEL")  # a misspelt name, said as such

    def make(seed: int = 0) -> torch.nn.Module:
        return build_model(name, vocab_size, seq_len, size=size, seed=seed, registry=registry, **options)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    model = make().eval()

    def determinism() -> str:
        other = make().eval()
        for (n1, p1), (_, p2) in zip(model.state_dict().items(), other.state_dict().items()):
            assert torch.equal(p1, p2), f"same seed gave different values for {n1}"
        with torch.no_grad():
            assert torch.equal(model(ids), other(ids)), "same seed and input gave different logits"
        different = make(seed=1)
        assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), different.state_dict().values())), \
            "a different seed gave identical weights"
        return "same seed: identical weights and logits; another seed: different weights"

    def gradients() -> str:
        trainable = make().train()
        logits = trainable(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        aux = trainable.auxiliary_loss() if hasattr(trainable, "auxiliary_loss") else None
        (loss + aux if aux is not None else loss).backward()
        missing = [n for n, p in trainable.named_parameters() if p.requires_grad and p.grad is None]
        bad = [n for n, p in trainable.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not missing, f"no gradient reaches: {', '.join(missing[:8])}"
        assert not bad, f"non-finite gradient in: {', '.join(bad[:8])}"
        count = sum(1 for p in trainable.parameters() if p.requires_grad)
        return f"all {count} parameter tensors get finite gradients"

    def round_trip() -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            safetensors.torch.save_model(model, str(path))
            fresh = make(seed=123).eval()
            safetensors.torch.load_model(fresh, str(path))
        with torch.no_grad():
            assert torch.equal(model(ids), fresh(ids)), "logits differ after a safetensors save/load"
        return "safetensors save/load into a fresh model gives identical logits"

    return [_run("shape", lambda: check_shape(model, ids, vocab_size)),
            _run("causality", lambda: check_causality(model, ids, vocab_size)),
            _run("determinism", determinism),
            _run("eval_determinism", lambda: check_eval_determinism(model, ids)),
            _run("gradients", gradients),
            _run("state_dict round trip", round_trip)]


def contract_record(model: nn.Module, key: Any, vocab_size: int, seq_len: int, device: torch.device,
                    cache: dict[Any, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The runtime checks' outcome for this model and configuration (``key``), run once per key.

    A model that declares ``causal = False`` is not probed: it is recorded as failing causality.
    The checks run on a copy, so the model itself (and the RNG) is left as it was.
    """
    if key not in cache:
        if getattr(model, "causal", True) is False:
            cache[key] = {"causality": {"passed": False, "detail": "the model declares itself non-causal "
                                                                  "(causal = False): position t reads later tokens"}}
        else:
            probe = copy.deepcopy(model)
            results = runtime_checks(probe, vocab_size, min(seq_len, 64), device)
            cache[key] = {r.name: {"passed": r.passed, "detail": r.detail} for r in results}
    return cache[key]


def require_contract(record: dict[str, dict[str, Any]], model: str, use: str) -> None:
    """Refuse ``use`` (e.g. "language modelling") for a model that failed a check it depends on."""
    for name in ("causality", "shape", "eval_determinism"):
        check = record.get(name)
        if check is not None and not check["passed"]:
            raise CellFailed(f"model {model!r} failed the {name} check, so it is refused for {use}: {check['detail']}")
