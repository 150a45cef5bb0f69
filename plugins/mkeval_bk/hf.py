"""ResNet-BK as a ``transformers`` model: a config with its own ``model_type`` and a
``PreTrainedModel`` wrapping ``BKLanguageModel``, so an exported checkpoint loads with
``AutoModelForCausalLM.from_pretrained``.

This module imports ``transformers``; the plugin imports it only when ``transformers`` is in
use. ``register_auto_classes`` is this plugin's ``mkeval.transformers`` entry point: mkeval
calls it as soon as ``transformers``' auto classes are imported (see ``mkeval.interop.hf_registration``).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .model import BKConfig, BKLanguageModel

MODEL_TYPE = "mkeval_bk"


class BKHFConfig(PretrainedConfig):
    """``BKConfig``'s fields (same names and defaults) as a ``transformers`` config, except ``top_k``,
    here ``moe_top_k``: ``transformers`` would read ``top_k`` as a sampling setting for generation."""

    model_type = MODEL_TYPE

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_channels: int = 8
    n_experts: int = 4
    moe_top_k: int = 2
    d_ff: int | None = None
    ffn_mult: float = 1.5
    coupling: str = "laplacian"
    causal: bool = True
    aux_loss_weight: float = 0.01
    im_z_init: float = 0.5
    im_z_min: float = 0.01
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int | None = None
    tie_word_embeddings: bool = True

    def to_bk(self) -> BKConfig:
        return BKConfig(**{f.name: getattr(self, _RENAMED.get(f.name, f.name)) for f in dataclasses.fields(BKConfig)})

    @classmethod
    def from_bk(cls, cfg: BKConfig, **kwargs) -> "BKHFConfig":
        fields = {_RENAMED.get(k, k): v for k, v in dataclasses.asdict(cfg).items()}
        return cls(**fields, tie_word_embeddings=cfg.tie_embeddings, **kwargs)


_RENAMED = {"top_k": "moe_top_k"}  # BKConfig field -> BKHFConfig field


class BKForCausalLM(PreTrainedModel, GenerationMixin):
    """``BKLanguageModel`` behind the ``transformers`` causal-LM interface (logits, optional loss)."""

    config_class = BKHFConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}

    def __init__(self, config: BKHFConfig):
        super().__init__(config)
        self.model = BKLanguageModel(config.to_bk())
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """``BKLanguageModel`` initialises itself (see its module docstring); nothing to add."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.head

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None, **kwargs) -> CausalLMOutput:
        # attention_mask and cache arguments are ignored: the model is causal and recomputes the prefix
        logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return CausalLMOutput(loss=loss, logits=logits)


def to_transformers(model: BKLanguageModel) -> BKForCausalLM:
    """A ``BKForCausalLM`` holding ``model``'s weights."""
    with torch.random.fork_rng(devices=[]):  # building initialises weights; leave the caller's RNG alone
        hf = BKForCausalLM(BKHFConfig.from_bk(model.config))
    hf.model.load_state_dict(model.state_dict())
    return hf.to(next(model.parameters()).device).eval()


def register_auto_classes() -> None:
    """Make ``AutoConfig`` and ``AutoModelForCausalLM`` know ``model_type: mkeval_bk``."""
    AutoConfig.register(MODEL_TYPE, BKHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(BKHFConfig, BKForCausalLM, exist_ok=True)
