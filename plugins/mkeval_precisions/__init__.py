"""First-party precisions: fp32, bf16 (autocast) and fp16 (autocast, loss scaling on CUDA)."""

from __future__ import annotations

import torch

import mkeval
from mkeval import PrecisionSpec


def _bf16_unsupported(device: torch.device) -> str | None:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support; use fp16 or fp32"
    return None


@mkeval.hookimpl
def register_precisions(register):
    register(PrecisionSpec(name="fp32", bits=32, description="full precision, no autocast"))
    register(PrecisionSpec(name="bf16", bits=16, autocast_dtype=torch.bfloat16, unsupported=_bf16_unsupported,
                           description="bfloat16 autocast; weights and optimiser state stay fp32"))
    register(PrecisionSpec(name="fp16", bits=16, autocast_dtype=torch.float16, grad_scaling=True,
                           description="float16 autocast; dynamic loss scaling on CUDA (CPU autocast has none)"))
