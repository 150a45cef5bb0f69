"""Weights to and from ``transformers``' ``MambaForCausalLM``.

The two models hold the same tensors under the same names except one: ``transformers``
calls the embedding ``backbone.embeddings`` (``mamba_ssm``: ``backbone.embedding``), and
its state dict also lists the tied ``lm_head.weight``.
"""

from __future__ import annotations

import torch

from mkeval import UsageError

from .model import MambaConfig, MambaLM

_HF_EMBEDDING = "backbone.embeddings.weight"
_EMBEDDING = "backbone.embedding.weight"


def _config_from_transformers(hf_config, backend: str) -> MambaConfig:
    problems = []
    if hf_config.hidden_act != "silu":
        problems.append(f"hidden_act={hf_config.hidden_act!r} (Mamba uses 'silu')")
    if not hf_config.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (this model's output head is the embedding)")
    if hf_config.intermediate_size != hf_config.expand * hf_config.hidden_size:
        problems.append(f"intermediate_size={hf_config.intermediate_size} != expand * hidden_size")
    if problems:
        raise UsageError("cannot convert this MambaForCausalLM: " + "; ".join(problems))
    return MambaConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        n_layer=hf_config.num_hidden_layers,
        d_state=hf_config.state_size,
        d_conv=hf_config.conv_kernel,
        expand=hf_config.expand,
        dt_rank=int(hf_config.time_step_rank),
        dt_min=hf_config.time_step_min,
        dt_max=hf_config.time_step_max,
        dt_init_floor=hf_config.time_step_floor,
        dt_scale=hf_config.time_step_scale,
        conv_bias=hf_config.use_conv_bias,
        bias=hf_config.use_bias,
        norm_eps=hf_config.layer_norm_epsilon,
        backend=backend,
    )


def from_transformers(hf_model, backend: str = "auto") -> MambaLM:
    """This plugin's ``MambaLM`` holding the weights of a ``transformers`` ``MambaForCausalLM``."""
    state = dict(hf_model.state_dict())
    head = state.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, state[_HF_EMBEDDING]):
        raise UsageError("cannot convert this MambaForCausalLM: lm_head.weight differs from the embedding (untied)")
    state[_EMBEDDING] = state.pop(_HF_EMBEDDING)
    with torch.random.fork_rng(devices=[]):  # building initialises weights; leave the caller's RNG alone
        model = MambaLM(_config_from_transformers(hf_model.config, backend))
    model.load_state_dict(state)
    return model.to(device=state[_EMBEDDING].device)


def to_transformers(model: MambaLM):
    """A ``transformers`` ``MambaForCausalLM`` holding ``model``'s weights."""
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    c = model.config
    hf_config = HFMambaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        state_size=c.d_state,
        conv_kernel=c.d_conv,
        expand=c.expand,
        time_step_rank=c.resolved_dt_rank,
        time_step_min=c.dt_min,
        time_step_max=c.dt_max,
        time_step_floor=c.dt_init_floor,
        time_step_scale=c.dt_scale,
        use_conv_bias=c.conv_bias,
        use_bias=c.bias,
        layer_norm_epsilon=c.norm_eps,
        hidden_act="silu",
        residual_in_fp32=True,
        # an initialisation flag only, and one that transformers 5's from_pretrained applies to the
        # loaded out_proj weights again (dividing them by sqrt(n_layer)): the weights here are final
        rescale_prenorm_residual=False,
        tie_word_embeddings=True,
        use_cache=False,
    )
    with torch.random.fork_rng(devices=[]):
        hf_model = MambaForCausalLM(hf_config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state[_HF_EMBEDDING] = state.pop(_EMBEDDING)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"weight names do not line up: missing {missing}, unexpected {unexpected}")
    if not torch.equal(hf_model.lm_head.weight, hf_model.backbone.embeddings.weight):
        raise RuntimeError("transformers did not tie lm_head.weight to the embedding")
    device = next(model.parameters()).device
    return hf_model.to(device)
