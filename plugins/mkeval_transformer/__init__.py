"""The `transformer` model: a GPT-2-style decoder built from `transformers` (from scratch, no download)."""

from __future__ import annotations

import torch
from torch import nn

import mkeval
from mkeval import ModelSpec, UsageError

# n_layer, n_embd, n_head: non-embedding parameters about 12 * n_layer * n_embd**2
SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2),  # ~0.1M
    "small": dict(n_layer=4, n_embd=144, n_head=4),  # ~1M
    "base": dict(n_layer=6, n_embd=384, n_head=6),  # ~10.6M
}


class GPT(nn.Module):
    """``transformers.GPT2LMHeadModel`` behind the mkeval model contract (tied embeddings)."""

    def __init__(self, vocab_size: int, max_seq_len: int, n_layer: int, n_embd: int, n_head: int,
                 dropout: float = 0.0):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_seq_len,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=None,
        )
        config._attn_implementation = "sdpa"
        self.gpt = GPT2LMHeadModel(config)
        _conv1d_to_linear(self.gpt)
        self.backend = "transformers.GPT2LMHeadModel (sdpa attention)"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=input_ids, use_cache=False).logits

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gpt.transformer(input_ids=input_ids, use_cache=False).last_hidden_state

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """transformers' own per-block activation checkpointing."""
        if not enabled:
            (getattr(self.gpt, "activation_checkpointing_disable", None) or self.gpt.gradient_checkpointing_disable)()
        elif hasattr(self.gpt, "activation_checkpointing_enable"):  # transformers >= 5
            self.gpt.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.gpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _conv1d_to_linear(model: nn.Module) -> None:
    """GPT-2 keeps its projections in ``Conv1D`` (a transposed linear). Swap each for the same
    ``nn.Linear`` (same weights, same outputs) so that tools acting on linear layers, such as
    weight-only quantization, see every projection."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                nx, nf = child.weight.shape
                linear = nn.Linear(nx, nf)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    linear.bias.copy_(child.bias)
                setattr(module, child_name, linear)


def build(vocab_size: int, max_seq_len: int, size: str | None = None, **options) -> GPT:
    config = dict(SIZES[size or "tiny"])
    config.update(options)
    for key in ("n_layer", "n_embd", "n_head"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise UsageError(f"transformer: {key} must be a positive integer, got {config[key]!r}")
    if config["n_embd"] % config["n_head"]:
        # the size knob moves n_embd; keep heads dividing it by rounding up to a multiple of n_head
        config["n_embd"] += config["n_head"] - config["n_embd"] % config["n_head"]
    return GPT(vocab_size, max_seq_len, **config)


@mkeval.hookimpl
def register_models(register):
    register(ModelSpec(
        name="transformer",
        build=build,
        sizes=tuple(SIZES),
        default_size="tiny",
        size_knob="n_embd",
        description="GPT-2-style decoder (transformers.GPT2LMHeadModel), learned positions, tied embeddings",
    ))


@mkeval.hookimpl
def register_flop_formulas(register):
    """CPU attention: ``FlopCounterMode`` counts the CUDA SDPA kernels but not the CPU flash kernel."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    register(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, forward)
    register(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, backward)
