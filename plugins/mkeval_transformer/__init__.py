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

    def recurrent_state(self) -> dict[str, int]:
        """Attention keeps a key and a value per layer for every token of the context (the KV cache)."""
        config = self.gpt.config
        return {"fixed": 0, "per_token": 2 * config.n_layer * config.n_embd}

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


def to_transformers(model: GPT):
    """A plain ``transformers.GPT2LMHeadModel`` (``Conv1D`` projections, as GPT-2 checkpoints have them)
    holding ``model``'s weights: each ``nn.Linear`` that replaced a ``Conv1D`` goes back transposed."""
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    config = model.gpt.config.__class__.from_dict(model.gpt.config.to_dict())
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):  # building initialises weights; leave the caller's RNG alone
        hf = GPT2LMHeadModel(config)
    conv = {name for name, module in hf.named_modules() if isinstance(module, Conv1D)}
    state = {}
    for key, value in model.gpt.state_dict().items():
        module, _, leaf = key.rpartition(".")
        # Conv1D stores [in, out], nn.Linear [out, in]: a square c_proj would load untransposed without error
        state[key] = value.detach().T.contiguous() if module in conv and leaf == "weight" else value.detach().clone()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weight names do not line up: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.to(next(model.parameters()).device).eval()


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
        options=("n_layer", "n_embd", "n_head", "dropout"),
        description="GPT-2-style decoder (transformers.GPT2LMHeadModel), learned positions, tied embeddings",
        to_transformers=to_transformers,
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
