"""Applying a registered precision: the autocast context and the loss scaler."""

from __future__ import annotations

import contextlib

import torch

from ..registry.contracts import PrecisionSpec


def autocast(precision: PrecisionSpec, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the precision's dtype, or a no-op for full precision."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.autocast_dtype)


def grad_scaler(precision: PrecisionSpec, device: torch.device) -> torch.amp.GradScaler:
    """Dynamic loss scaling where it is needed (fp16 on CUDA); a disabled scaler otherwise."""
    enabled = precision.grad_scaling and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)
