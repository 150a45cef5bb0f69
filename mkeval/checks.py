"""The model contract checks behind ``mkeval check``; the test suite runs the same on every built-in model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch

from .errors import UsageError
from .models import build_model
from .registry import Registry


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


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

    def make(seed: int = 0) -> torch.nn.Module:
        return build_model(name, vocab_size, seq_len, size=size, seed=seed, registry=registry, **options)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
    results = []

    def check(label: str, fn: Callable[[], str]) -> None:
        try:
            results.append(CheckResult(label, True, fn()))
        except AssertionError as exc:
            results.append(CheckResult(label, False, str(exc)))
        except Exception as exc:  # a crash is a failed check, with its reason
            results.append(CheckResult(label, False, f"{type(exc).__name__}: {exc}"))

    model = make().eval()

    def shape() -> str:
        with torch.no_grad():
            logits = model(ids)
            hidden = model.hidden_states(ids)
        assert tuple(logits.shape) == (batch_size, seq_len, vocab_size), \
            f"logits shape {tuple(logits.shape)}, expected {(batch_size, seq_len, vocab_size)}"
        assert hidden.dim() == 3 and tuple(hidden.shape[:2]) == (batch_size, seq_len), \
            f"hidden_states shape {tuple(hidden.shape)}, expected ({batch_size}, {seq_len}, D)"
        assert torch.isfinite(logits).all(), "logits contain non-finite values"
        return f"logits {tuple(logits.shape)}, hidden states {tuple(hidden.shape)}"

    def causality() -> str:
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

    check("shape", shape)
    check("causality", causality)
    check("determinism", determinism)
    check("gradients", gradients)
    check("state_dict round trip", round_trip)
    return results
