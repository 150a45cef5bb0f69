"""The Mamba-1 language model as ``mamba_ssm`` defines it (``MambaLMHeadModel``), in one file.

Parameter names and shapes are ``mamba_ssm``'s (``backbone.embedding``,
``backbone.layers.N.norm``, ``backbone.layers.N.mixer.{in_proj, conv1d, x_proj, dt_proj,
A_log, D, out_proj}``, ``backbone.norm_f``); the output head is the embedding matrix (tied),
so it has no parameter of its own. The initialisation is ``mamba_ssm``'s and is stated in
``MambaLM.init_weights``. References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces" (2023); state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py`` and
``mamba_ssm/models/mixer_seq_simple.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from . import backend as backends
from .conv import causal_conv1d_silu
from .scan import selective_scan, selective_scan_ref


@dataclass(frozen=True)
class MambaConfig:
    vocab_size: int
    d_model: int = 64
    n_layer: int = 3
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False  # in_proj and out_proj biases
    norm_eps: float = 1e-5
    initializer_range: float = 0.02  # embedding std
    rescale_prenorm_residual: bool = True  # out_proj /= sqrt(n_layer)
    backend: str = "auto"  # see backend.py; "auto" defers to $MKEVAL_MAMBA_BACKEND
    chunk_size: int | None = None  # compiled and torch backends' scan chunk; None: about sqrt(L)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank is None else self.dt_rank


def _plain(weight: torch.Tensor) -> bool:
    """A weight held as an ordinary tensor: not a quantized tensor subclass (torchao's), which
    supports only the module's own call, so the mixer then takes the layers' usual path."""
    return type(weight) in (torch.Tensor, nn.Parameter)


class Mixer(nn.Module):
    """The Mamba block's mixer: gated, convolved, selective state-space layer (``mamba_ssm``'s ``Mamba``)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        d, di, n, r = config.d_model, config.d_inner, config.d_state, config.resolved_dt_rank
        self.in_proj = nn.Linear(d, 2 * di, bias=config.bias)  # x and the gate z
        self.conv1d = nn.Conv1d(di, di, config.d_conv, groups=di, padding=config.d_conv - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)  # input-dependent dt (low rank), B, C
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, n))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, d, bias=config.bias)

    def forward(self, hidden: torch.Tensor, backend: str) -> torch.Tensor:
        length = hidden.shape[1]
        if backend == "compiled" and _plain(self.in_proj.weight):
            # x and z as two products, each (batch, L, d_inner) and contiguous, the compiled kernels'
            # layout; one product and its halves would make autograd join their gradients (a copy)
            weights = self.in_proj.weight.chunk(2)
            biases = (None, None) if self.in_proj.bias is None else self.in_proj.bias.chunk(2)
            x, z = (F.linear(hidden, w, b).transpose(1, 2) for w, b in zip(weights, biases))
        else:
            xz = self.in_proj(hidden).transpose(1, 2)  # (batch, 2 d_inner, L)
            x, z = xz.chunk(2, dim=1)
        if backend == "cuda":
            kernels = backends.cuda_kernels()
            weight = self.conv1d.weight.squeeze(1)
            x = kernels.causal_conv1d_fn(x.contiguous(), weight, self.conv1d.bias, activation="silu")
        elif backend == "compiled" and _plain(self.conv1d.weight):  # the same maths in one compiled op
            x = causal_conv1d_silu(x, self.conv1d.weight.squeeze(1), self.conv1d.bias)
        else:
            x = F.silu(self.conv1d(x)[..., :length])  # padding both sides, keep the causal part
        n = self.config.d_state
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.config.resolved_dt_rank, n, n], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # the bias is added inside the scan
        A = -torch.exp(self.A_log.float())
        args = (x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float())
        kwargs = dict(z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        if backend == "cuda":
            y = backends.cuda_kernels().selective_scan_fn(*(t.contiguous() for t in args), **kwargs)
        elif backend == "reference":
            y = selective_scan_ref(*args, **kwargs)
        else:  # compiled or torch
            y = selective_scan(*args, **kwargs, chunk_size=self.config.chunk_size, kernel=backend)
        return self.out_proj(y.transpose(1, 2))


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(RMSNorm(h)). Under autocast the residual stays fp32 (residual_in_fp32)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = Mixer(config)

    def forward(self, hidden: torch.Tensor, backend: str) -> torch.Tensor:
        return hidden + self.mixer(self.norm(hidden), backend)


class Backbone(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, backend: str) -> torch.Tensor:
        hidden = self.embedding(input_ids)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, backend, use_reentrant=False)
            else:
                hidden = layer(hidden, backend)
        return self.norm_f(hidden)


class MambaLM(nn.Module):
    """Mamba-1 language model: ``forward(ids[B, N]) -> logits[B, N, V]``.

    ``backend`` names the scan the latest forward used (before any forward: ``cuda`` if that
    was asked for, else the one it would use on the CPU).
    """

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.requested_backend = backends.requested_backend(None if config.backend == "auto" else config.backend)
        backends.check_requested(self.requested_backend)
        self.backbone = Backbone(config)
        self.init_weights()
        # Built on the CPU; a model asked to use mamba_ssm's kernels will run them once moved to a GPU.
        cpu = torch.device("cpu")
        if self.requested_backend == "cuda":
            self.backend = "cuda"
        else:
            self.backend = backends.backend_for(self.requested_backend, cpu)

    @torch.no_grad()
    def init_weights(self) -> None:
        """``mamba_ssm``'s initialisation, layer by layer from the one RNG stream."""
        c = self.config
        nn.init.normal_(self.backbone.embedding.weight, std=c.initializer_range)
        for block in self.backbone.layers:
            m = block.mixer
            # nn.Linear / nn.Conv1d defaults (kaiming_uniform(a=sqrt 5)); Linear biases start at 0.
            for layer in (m.in_proj, m.conv1d, m.x_proj, m.dt_proj, m.out_proj):
                layer.reset_parameters()
            for layer in (m.in_proj, m.out_proj):
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            # dt_proj: weight ~ U(+-dt_rank^-0.5 * dt_scale); softplus(bias) = dt, log-uniform in [dt_min, dt_max].
            std = c.resolved_dt_rank**-0.5 * c.dt_scale
            nn.init.uniform_(m.dt_proj.weight, -std, std)
            log_dt = torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)
            dt = torch.exp(log_dt).clamp(min=c.dt_init_floor)
            m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            # S4D-real: A = -(1, 2, ..., d_state) for every channel; D = 1.
            m.A_log.copy_(torch.log(torch.arange(1, c.d_state + 1, dtype=torch.float32)).expand(c.d_inner, -1))
            m.D.fill_(1.0)
            if c.rescale_prenorm_residual:  # GPT-2 scheme: one residual branch per layer
                m.out_proj.weight.div_(math.sqrt(c.n_layer))
            block.norm.reset_parameters()
        self.backbone.norm_f.reset_parameters()

    def _backend(self, device: torch.device) -> str:
        used = backends.backend_for(self.requested_backend, device)
        if used != self.backend:
            self.backend = used
        return used

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each layer's activations in the backward pass (less memory, one more forward)."""
        self.backbone.gradient_checkpointing = enabled

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states ``[B, N, d_model]``."""
        return self.backbone(input_ids, self._backend(input_ids.device))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden_states(input_ids), self.backbone.embedding.weight)

    def recurrent_state(self) -> dict[str, int]:
        """Per layer: the convolution's last ``d_conv - 1`` inputs and the SSM state
        (``d_inner x d_state``), as ``mamba_ssm``'s inference cache holds them."""
        c = self.config
        return {"fixed": c.n_layer * c.d_inner * (c.d_conv - 1 + c.d_state), "per_token": 0}

    def no_weight_decay(self) -> set[str]:
        """A_log and D, as in ``mamba_ssm`` (norms, biases and embeddings the core excludes itself)."""
        return {name for name, _ in self.named_parameters() if name.endswith((".mixer.A_log", ".mixer.D"))}
