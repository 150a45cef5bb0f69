"""The one protocol: every training and evaluation hyperparameter of a run, in one dataclass.

Every model in a run gets the same protocol; its full contents and a stable hash go
into every result. CLI flags and a YAML file (``--config``) both set it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UsageError


@dataclass(frozen=True)
class Protocol:
    """Hyperparameters shared by every cell of a run. Units are in the field comments."""

    # optimiser: AdamW; no decay on norms, biases, embeddings and what a model marks
    optimizer: str = "adamw"
    lr: float = 3e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # schedule: linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    # data and budget
    batch_size: int = 16  # sequences per optimiser step
    seq_lens: tuple[int, ...] = (128,)  # one cell per length
    train_tokens: int = 262_144  # training budget in tokens; steps = train_tokens // (batch_size * seq_len)
    eval_interval: int = 25  # optimiser steps between validation evaluations
    eval_tokens: int = 32_768  # tokens scored per validation evaluation (0 = whole split)
    test_tokens: int = 0  # tokens scored in the final test evaluation (0 = whole split)
    seeds: tuple[int, ...] = (0,)  # model initialisation and batch order; one cell per seed
    data_seed: int = 1234  # the data itself (synthetic sources), the same for every seed and model
    model_size: str | None = None  # size preset for every model (None: each model's default)
    tokenizer: str = "word"  # text datasets: word, byte, bpe[:VOCAB] or a local Hugging Face tokenizer
    eval_stride: int = 0  # evaluation window stride in tokens (0: seq_len, non-overlapping windows)
    grad_checkpointing: bool = False  # recompute activations in backward (long contexts; the model must support it)
    # robustness
    max_nonfinite: int = 5  # consecutive non-finite losses that fail a cell
    checkpoint_interval: int = 200  # optimiser steps between saved training states (--resume continues there); 0: never
    # downstream fine-tuning: one recipe for every model and task (AdamW, linear warmup then linear decay to 0)
    ft_lr: float = 3e-4  # peak learning rate
    ft_epochs: int = 3  # passes over the task's train split
    ft_batch_size: int = 16  # examples per optimiser step (and per evaluation batch)
    ft_max_len: int = 256  # tokens per input; after pretraining, at most the pretraining seq_len
    ft_weight_decay: float = 0.01
    ft_warmup_ratio: float = 0.1  # fraction of fine-tuning steps spent warming up
    ft_doc_stride: int = 128  # span tasks: tokens between the starts of a passage's windows
    ft_max_answer_len: int = 30  # span tasks: longest answer predicted, in tokens
    fewshot: tuple[int, ...] = (0, 5)  # prompt-scored tasks (MMLU): shot counts evaluated

    def __post_init__(self) -> None:
        for name in ("seq_lens", "seeds", "betas", "fewshot"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise UsageError(f"protocol field {name!r}: {what} (got {getattr(self, name)!r})")

        need(self.optimizer == "adamw", "optimizer", "only 'adamw' is supported")
        need(_finite_pos(self.lr), "lr", "must be a positive number")
        need(len(self.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.betas), "betas",
             "must be two numbers in [0, 1)")
        need(_finite_pos(self.eps), "eps", "must be positive")
        need(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be a finite number >= 0")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", "must be an integer >= 0")
        need(_finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "must be a finite number >= 0")
        need(_pos_int(self.batch_size), "batch_size", "must be a positive integer")
        need(len(self.seq_lens) > 0 and all(_pos_int(n) for n in self.seq_lens), "seq_lens",
             "sequence lengths must be positive integers")
        need(_pos_int(self.train_tokens), "train_tokens", "must be a positive integer")
        need(_pos_int(self.eval_interval), "eval_interval", "must be a positive integer")
        need(isinstance(self.eval_tokens, int) and self.eval_tokens >= 0, "eval_tokens", "must be an integer >= 0")
        need(isinstance(self.test_tokens, int) and self.test_tokens >= 0, "test_tokens", "must be an integer >= 0")
        need(len(self.seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in self.seeds), "seeds",
             "seeds must be integers >= 0")
        need(isinstance(self.data_seed, int) and self.data_seed >= 0, "data_seed", "must be an integer >= 0")
        need(_pos_int(self.max_nonfinite), "max_nonfinite", "must be a positive integer")
        need(isinstance(self.checkpoint_interval, int) and not isinstance(self.checkpoint_interval, bool)
             and self.checkpoint_interval >= 0, "checkpoint_interval", "must be an integer >= 0")
        need(isinstance(self.grad_checkpointing, bool), "grad_checkpointing", "must be true or false")
        need(_finite_pos(self.ft_lr), "ft_lr", "must be a positive number")
        for name in ("ft_epochs", "ft_batch_size", "ft_doc_stride", "ft_max_answer_len"):
            need(_pos_int(getattr(self, name)), name, "must be a positive integer")
        need(_pos_int(self.ft_max_len) and self.ft_max_len >= 8, "ft_max_len", "must be an integer >= 8")
        need(_finite(self.ft_weight_decay) and self.ft_weight_decay >= 0, "ft_weight_decay", "must be >= 0")
        need(_finite(self.ft_warmup_ratio) and 0 <= self.ft_warmup_ratio < 1, "ft_warmup_ratio", "must be in [0, 1)")
        need(all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in self.fewshot)
             and len(set(self.fewshot)) == len(self.fewshot), "fewshot", "must be distinct integers >= 0")
        need(len(set(self.seq_lens)) == len(self.seq_lens), "seq_lens", "each length may appear once")
        need(len(set(self.seeds)) == len(self.seeds), "seeds", "each seed may appear once")
        need(isinstance(self.tokenizer, str) and bool(self.tokenizer.strip()), "tokenizer", "must be a name or path")
        from .data.tokenizers import parse_spec

        parse_spec(self.tokenizer)
        need(isinstance(self.eval_stride, int) and self.eval_stride >= 0, "eval_stride", "must be an integer >= 0")
        if self.eval_stride and any(self.eval_stride > n for n in self.seq_lens):
            raise UsageError(f"protocol field 'eval_stride': {self.eval_stride} exceeds a sequence length "
                             f"({min(self.seq_lens)}); a stride must be at most seq_len")
        for n in self.seq_lens:
            if self.batch_size * n > self.train_tokens:
                raise UsageError(
                    f"protocol: train_tokens={self.train_tokens} is less than one batch "
                    f"(batch_size {self.batch_size} x seq_len {n}); raise --train-tokens"
                )

    # ------------------------------------------------------------------ derived
    def steps(self, seq_len: int) -> int:
        """Optimiser steps for one cell at ``seq_len``."""
        return self.train_tokens // (self.batch_size * seq_len)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def identity(self) -> dict[str, Any]:
        """What the numbers depend on: ``to_dict`` without the fields that cannot change a number."""
        return {k: v for k, v in self.to_dict().items() if k not in NUMBER_NEUTRAL}

    @property
    def hash(self) -> str:
        return stable_hash(self.identity())

    def replace(self, **changes: Any) -> "Protocol":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "protocol") -> "Protocol":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{source}: unknown protocol field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


NUMBER_NEUTRAL = frozenset({"checkpoint_interval"})
"""Protocol fields that change how a run proceeds but never a number: not part of any hash."""

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader when pyyaml has it: ~10x faster


def read_yaml(path: Path, label: str) -> tuple[Any, Any]:
    """``(data, node tree)`` of a YAML file, safe loader only; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{label} {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.load(text, Loader=SAFE_LOADER), yaml.compose(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        detail = getattr(exc, "problem", None) or exc
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and context_mark is not None:  # an unclosed bracket's problem is at the end of the file
            detail = f"{detail} ({context} at line {context_mark.line + 1})"
        raise UsageError(f"{where}: malformed YAML: {detail}") from None


def stable_hash(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _finite_pos(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _pos_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


