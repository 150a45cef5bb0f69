"""The ResNet-BK language model, in the order data flows through it.

token embedding -> n_layers x [x + BKMixing(norm(x)); x + MoEFeedForward(norm(x))] -> norm -> LM head

``BKMixing`` mixes tokens through the diagonal of a tridiagonal resolvent: a projection of
each token gives ``n_channels`` potentials ``v``; channel ``c`` solves its own system
``H_c = H0_c + diag(v_c)`` at its own learned shift ``z_c`` (``Im z_c > 0`` by construction),
and ``Re``/``Im`` of ``G_ii = [(H_c - z_c)^-1]_ii`` are projected back to the model width.
``H0`` is the discrete Laplacian (-2 on the diagonal, 1 off it) or, with
``coupling="learned"``, a per-channel learned onsite term and coupling started at those
values. The resolvent is causal (entry ``i`` sees positions ``0..i``) unless the model is
built with ``causal=False``, which is for encoder-style fine-tuning only.

``MoEFeedForward`` routes each token to its ``top_k`` experts; the router's softmax
probabilities scale the chosen experts' outputs (so the router gets gradient from the LM
loss) and a Switch-style load-balancing loss is exposed through ``auxiliary_loss()``.
Every expert runs on every token and the gates zero the rest: shapes never depend on
routing, so a token's output is bit-identical whatever later tokens do (gather-by-expert
changes matmul shapes, and with them rounding). That costs ``n_experts / top_k`` times the
FFN FLOPs, acceptable at the sizes here.

Initialisation: weights ~ N(0, 0.02), biases 0, residual output projections scaled by
``1 / sqrt(2 n_layers)`` (GPT-2); the potential projection ~ N(0, 1/d_model) so that
potentials start at the scale of the Laplacian's band and the resolvent responds to tokens.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from mkeval import UsageError
from torch import nn

from .ops import backend_name, resolvent_diagonal_real

log = logging.getLogger(__name__)

COUPLINGS = ("laplacian", "learned")


@dataclass(frozen=True)
class BKConfig:
    """Everything that defines a ResNet-BK model. Invalid values fail here, naming the field."""

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_channels: int = 8
    n_experts: int = 4
    top_k: int = 2
    d_ff: int | None = None  # expert hidden width; None: round(ffn_mult * d_model)
    ffn_mult: float = 1.5
    coupling: str = "laplacian"
    causal: bool = True
    aux_loss_weight: float = 0.01
    im_z_init: float = 0.5
    im_z_min: float = 0.01  # Im z = im_z_min + softplus(raw) > 0 whatever raw becomes
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    max_seq_len: int | None = None  # recorded only: the resolvent has no length limit

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, why: str) -> None:
            if not ok:
                raise UsageError(f"bk model: {field}={getattr(self, field)!r} is invalid: {why}")

        for name in ("vocab_size", "d_model", "n_layers", "n_channels", "n_experts", "top_k"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "must be an integer >= 1")
        need(self.top_k <= self.n_experts, "top_k", f"must be at most n_experts={self.n_experts}")
        need(self.d_ff is None or (isinstance(self.d_ff, int) and self.d_ff >= 1), "d_ff", "must be an integer >= 1")
        need(self.ffn_mult > 0, "ffn_mult", "must be positive")
        need(self.hidden_width >= 1, "ffn_mult", f"gives an expert width of {self.hidden_width}; it must be >= 1")
        need(self.coupling in COUPLINGS, "coupling", f"must be one of {', '.join(COUPLINGS)}")
        need(isinstance(self.causal, bool), "causal", "must be True or False")
        need(self.aux_loss_weight >= 0, "aux_loss_weight", "must be >= 0")
        need(self.im_z_min > 0, "im_z_min", "must be > 0 (the resolvent needs Im z > 0)")
        need(self.im_z_init > self.im_z_min, "im_z_init", f"must exceed im_z_min={self.im_z_min}")
        need(self.norm_eps > 0, "norm_eps", "must be > 0")

    @property
    def hidden_width(self) -> int:
        return self.d_ff if self.d_ff is not None else round(self.ffn_mult * self.d_model)


PRESETS: dict[str, dict[str, Any]] = {
    # non-embedding parameters: about 0.1M, 1M and 10M
    "tiny": dict(d_model=64, n_layers=2, n_channels=8, n_experts=4, top_k=2, ffn_mult=1.5),
    "small": dict(d_model=128, n_layers=4, n_channels=16, n_experts=4, top_k=2, ffn_mult=2.0),
    "base": dict(d_model=256, n_layers=8, n_channels=32, n_experts=4, top_k=2, ffn_mult=2.4),
}


# --------------------------------------------------------------------------- modules
class BKMixing(nn.Module):
    """Token mixing through the diagonal of ``n_channels`` tridiagonal resolvents."""

    def __init__(self, cfg: BKConfig):
        super().__init__()
        c = cfg.n_channels
        self.causal = cfg.causal
        self.im_z_min = cfg.im_z_min
        self.potential = nn.Linear(cfg.d_model, c)
        # Shifts spread over the Laplacian's band [-4, 0], so channels start at different energies.
        self.z_re = nn.Parameter(torch.linspace(-3.5, -0.5, c) if c > 1 else torch.full((1,), -2.0))
        raw = math.log(math.expm1(cfg.im_z_init - cfg.im_z_min))  # softplus^-1
        self.z_im_raw = nn.Parameter(torch.full((c,), raw))
        if cfg.coupling == "learned":
            self.onsite = nn.Parameter(torch.full((c,), -2.0))
            self.coupling = nn.Parameter(torch.ones(c))
        else:
            self.register_parameter("onsite", None)
            self.register_parameter("coupling", None)
        self.out = nn.Linear(2 * c, cfg.d_model)

    def z_im(self) -> torch.Tensor:
        return self.im_z_min + F.softplus(self.z_im_raw)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        c = self.z_re.shape[0]
        # The recursion runs in float32 even under autocast (it needs the range).
        v = self.potential(h).float().transpose(1, 2)  # [B, C, N]
        if self.onsite is None:
            diag = v - 2.0
            off = v.new_ones(n - 1)
        else:
            diag = v + self.onsite[:, None]
            off = self.coupling[:, None].expand(c, n - 1)
        z_im = self.z_im()
        g = resolvent_diagonal_real(diag, off, self.z_re, z_im, causal=self.causal)  # [B, C, N, 2]
        # |G_ii| <= 1 / Im z: scaling by Im z keeps every feature in the unit disk.
        g = g * z_im[:, None, None]
        features = g.permute(0, 2, 1, 3).reshape(b, n, 2 * c)
        return self.out(features.to(h.dtype))


class MoEFeedForward(nn.Module):
    """Top-k mixture of GELU experts with gate-scaled outputs and a load-balancing loss."""

    def __init__(self, cfg: BKConfig):
        super().__init__()
        e, d, f = cfg.n_experts, cfg.d_model, cfg.hidden_width
        self.top_k = cfg.top_k
        self.aux_loss_weight = cfg.aux_loss_weight
        self.router = nn.Linear(d, e, bias=False)
        # Experts are plain nn.Linear layers (what weight-only quantization acts on): the input
        # projections of all experts as one matmul, the output projections one per expert.
        self.experts_in = nn.Linear(d, e * f)
        self.experts_out = nn.ModuleList(nn.Linear(f, d) for _ in range(e))
        self.aux_loss: torch.Tensor | None = None
        self.data_parallel = False  # set by BKLanguageModel.set_data_parallel

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        e = len(self.experts_out)
        probs = self.router(h).float().softmax(-1)  # [B, N, E]
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p)  # chosen experts' probabilities, else 0
        hidden = F.gelu(self.experts_in(h)).unflatten(-1, (e, -1))  # [B, N, E, F]
        out = torch.stack([expert(hidden[..., i, :]) for i, expert in enumerate(self.experts_out)], dim=-2)
        # Switch Transformer balance loss: n_experts * sum_e (share of assignments) * (mean probability)
        share = F.one_hot(top_i, e).sum(-2).float().mean((0, 1)) / self.top_k
        mean_probs = probs.mean((0, 1))
        if self.data_parallel and self.training and torch.is_grad_enabled():  # training: the statistics of the
            # global batch, not of this rank's block of it (evaluation runs no collective: ranks may score unequal batches)
            share, mean_probs = _mean_over_ranks(torch.stack((share, mean_probs))).unbind(0)  # one collective
        self.aux_loss = self.aux_loss_weight * e * (share * mean_probs).sum()
        return torch.einsum("bne,bned->bnd", gates.to(out.dtype), out)


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over data-parallel ranks (equal row blocks), differentiable: the backward
    pass sums each rank's gradient, so every rank's rows get the global loss's gradient."""
    import torch.distributed as dist
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x) / dist.get_world_size()


class Block(nn.Module):
    """Pre-norm residual block: BK mixing, then the mixture of experts."""

    def __init__(self, cfg: BKConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mix = BKMixing(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.moe = MoEFeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.norm1(x))
        return x + self.moe(self.norm2(x))


class BKLanguageModel(nn.Module):
    """``forward(LongTensor[B, N]) -> logits [B, N, V]``; ``causal`` says whether position t
    sees only tokens ``0..t`` (False only for encoder-style fine-tuning)."""

    def __init__(self, cfg: BKConfig):
        super().__init__()
        self.config = cfg
        self.causal = cfg.causal
        self.gradient_checkpointing = False
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        nn.init.normal_(self.embed.weight, std=0.02)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.head.weight, std=0.02)
        for block in self.blocks:
            nn.init.normal_(block.mix.potential.weight, std=1 / math.sqrt(cfg.d_model))
            nn.init.zeros_(block.mix.potential.bias)
            nn.init.normal_(block.mix.out.weight, std=residual_std)
            nn.init.zeros_(block.mix.out.bias)
            nn.init.normal_(block.moe.router.weight, std=0.02)
            nn.init.normal_(block.moe.experts_in.weight, std=0.02)
            nn.init.zeros_(block.moe.experts_in.bias)
            for expert in block.moe.experts_out:
                nn.init.normal_(expert.weight, std=residual_std)
                nn.init.zeros_(expert.bias)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, N]`` -> final-norm hidden states ``[B, N, d_model]``."""
        x = self.embed(input_ids)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def set_data_parallel(self, enabled: bool) -> None:
        """Under data-parallel training (mkeval's torchrun mode, every rank stepping in lockstep),
        compute the load-balancing loss from the whole global batch's routing statistics, so the
        loss and its gradient do not depend on the number of ranks (docs/distributed.md)."""
        for block in self.blocks:
            block.moe.data_parallel = enabled

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass (less memory, one more forward)."""
        self.gradient_checkpointing = enabled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(input_ids))

    @property
    def backend(self) -> str:
        """The resolvent backend that runs on this model's device (recorded in results)."""
        return backend_name(self.embed.weight.device)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """The weighted load-balancing loss of the latest forward (None before the first)."""
        losses = [b.moe.aux_loss for b in self.blocks if b.moe.aux_loss is not None]
        return torch.stack(losses).sum() if losses else None

    def active_parameters(self) -> int:
        """Non-embedding parameters acting on one token: each token's output mixes only its
        ``top_k`` of ``n_experts`` experts (the others run, gated to zero, only so that shapes do
        not depend on routing), so the experts count ``top_k / n_experts`` of their size."""
        cfg = self.config
        embedding = self.embed.weight.numel()
        total = sum(p.numel() for p in self.parameters()) - embedding
        experts = sum(p.numel() for b in self.blocks for m in (b.moe.experts_in, b.moe.experts_out)
                      for p in m.parameters())
        return total - experts + experts * cfg.top_k // cfg.n_experts

    def recurrent_state(self) -> dict[str, int]:
        """Generating token by token, each layer carries the causal recursion's last ``g`` (one
        complex number, two floats) per channel: nothing grows with the context."""
        return {"fixed": 2 * self.config.n_channels * self.config.n_layers, "per_token": 0}

    def no_weight_decay(self) -> set[str]:
        """The spectral parameters (shifts z, onsite terms, couplings): decay would pull them to 0."""
        names = ("z_re", "z_im_raw", "onsite", "coupling")
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in names}


# --------------------------------------------------------------------------- building
_OPTIONS = {f.name for f in fields(BKConfig)} - {"vocab_size", "max_seq_len"}
OPTIONS = tuple(sorted(_OPTIONS | {"target_params"}))  # what build() accepts, declared to the registry


def non_embedding_params(cfg: BKConfig) -> int:
    """Parameters outside ``nn.Embedding``, counted on a meta-device model (nothing allocated)."""
    with torch.device("meta"):
        model = BKLanguageModel(cfg)
    embedding = model.embed.weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding


def config_for_target(base: BKConfig, target_params: int) -> BKConfig:
    """``base`` with the ``d_model`` whose non-embedding parameter count is closest to the target."""
    if not isinstance(target_params, int) or target_params < 1:
        raise UsageError(f"bk model: target_params={target_params!r} is invalid: must be an integer >= 1")
    lo, hi = 1, 1
    while non_embedding_params(replace(base, d_model=hi)) < target_params:
        lo, hi = hi, hi * 2
        if hi > 1 << 16:
            raise UsageError(f"bk model: target_params={target_params} needs d_model above {1 << 16}")
    while hi - lo > 1:  # counts grow with d_model, so bisect
        mid = (lo + hi) // 2
        if non_embedding_params(replace(base, d_model=mid)) < target_params:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda d: abs(non_embedding_params(replace(base, d_model=d)) - target_params))
    return replace(base, d_model=best)


def build(vocab_size: int, max_seq_len: int, size: str | None = None, **options: Any) -> BKLanguageModel:
    """A ResNet-BK model from a size preset (``tiny``, ``small``, ``base``) and overrides.

    Any ``BKConfig`` field may be given as an option (``d_model`` is the size knob; the
    expert width follows it through ``ffn_mult`` unless ``d_ff`` is given). ``target_params``
    picks ``d_model`` for a non-embedding parameter count instead.
    """
    size = size or "tiny"
    if size not in PRESETS:
        raise UsageError(f"bk model: size={size!r} is invalid: choose one of {', '.join(PRESETS)}")
    target = options.pop("target_params", None)
    unknown = set(options) - _OPTIONS
    if unknown:
        raise UsageError(
            f"bk model: unknown option(s) {', '.join(sorted(unknown))}; valid options are "
            f"{', '.join(sorted(_OPTIONS | {'target_params'}))}"
        )
    if target is not None and "d_model" in options:
        raise UsageError("bk model: give d_model or target_params, not both")
    cfg = BKConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **{**PRESETS[size], **options})
    if target is not None:
        cfg = config_for_target(cfg, target)
    if not cfg.causal:
        log.warning("bk model built with causal=False: bidirectional, for encoder-style fine-tuning only")
    return BKLanguageModel(cfg)
