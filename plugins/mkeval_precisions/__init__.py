"""First-party precisions: fp32, bf16 (autocast), fp16 (autocast, loss scaling on CUDA), and the
weight-only quantized int8, int4 and int4-packed (torchao; evaluation of a trained checkpoint)."""

from __future__ import annotations

import torch

import mkeval
from mkeval import PrecisionSpec

from . import quantized


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
    for name, bits, what in (("int8", 8, "int8 weights, per output channel"),
                             ("int4", 4, f"int4 weights, groups of {quantized.INT4_GROUP} (int8 storage)"),
                             ("int4-packed", 4, "packed int4 weights (tinygemm), CUDA + bfloat16 only")):
        register(PrecisionSpec(name=name, bits=bits, unsupported=quantized.unsupported(name),
                               quantize=lambda model, n=name: quantized.quantize(n, model),
                               description=f"torchao weight-only PTQ of every nn.Linear: {what}; evaluates a "
                                           "trained checkpoint, never trains"))
