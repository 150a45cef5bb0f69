"""lm-evaluation-harness on mkeval checkpoints: a ``TemplateLM`` registered as lm-eval model ``mkeval``.

``mkeval.lm_eval_model(CHECKPOINT)`` returns one for ``lm_eval.simple_evaluate(model=...)``;
``mkeval lm-eval CHECKPOINT -- ARGS`` runs lm-eval's own command line with ``--model mkeval``.
Scoring follows lm-eval's ``HFLM`` for causal models: a continuation is scored after
``(context + continuation)[-(max_length + 1):]``, documents are scored in lm-eval's rolling
windows (``get_rolling_token_windows`` with ``context_len=1``), and the end-of-document token is
the prefix of an empty context. ``max_length`` defaults to the sequence length the model was
trained at (the checkpoint's ``max_seq_len``). Generation is greedy, without a KV cache (the
models here are small and mkeval's model contract is ``input_ids -> logits``).
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model

from ..engine.checkpoint import load_checkpoint, read_config, read_identity
from ..errors import UsageError
from ..engine.precision import autocast

log = logging.getLogger(__name__)

MODEL_NAME = "mkeval"
DEFAULT_BATCH_SIZE = 16


class MkevalLM(TemplateLM):
    """An mkeval checkpoint directory as an lm-eval language model.

    ``pretrained``: the checkpoint directory; ``max_length``: the most tokens a forward pass
    sees (default: the training sequence length); ``batch_size``: windows per forward pass
    (``auto`` is read as the default); ``device``; ``precision``: an mkeval precision name
    (default ``fp32``; a post-training one quantizes the loaded model); ``max_gen_toks``: the
    generation budget when a task sets none.
    """

    def __init__(self, pretrained: str, max_length: int | None = None, batch_size: int | str | None = None,
                 device: str | None = None, precision: str = "fp32", max_gen_toks: int = 256,
                 max_batch_size: int | None = None, **unused: Any):
        super().__init__()
        from ..registry.manager import get_registry

        if unused:
            log.warning("mkeval lm-eval model: ignoring model_args %s", ", ".join(sorted(unused)))
        self.checkpoint = Path(pretrained)
        config = read_config(self.checkpoint)
        if not config.get("causal", True):
            raise UsageError(f"checkpoint {pretrained}: the model is not causal (causal=false in config.json); "
                             "log-likelihoods and generation need a causal language model")
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self._device.type == "cuda" and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; its HFLM falls back the same way
            log.warning("device %s requested but CUDA is not available; using the CPU", self._device)
            self._device = torch.device("cpu")
        registry = get_registry()
        self.precision = registry.get("precision", precision, option="model_args precision")
        why = self.precision.unsupported(self._device) if self.precision.unsupported else None
        if why:
            raise UsageError(f"precision {precision!r} cannot run on {self._device}: {why}")
        self.model, self.mk_tokenizer = load_checkpoint(self.checkpoint, device=self._device, registry=registry)
        if self.precision.quantize is not None:  # a post-training precision quantizes the loaded copy
            self.quantization = self.precision.quantize(self.model)
        if self.mk_tokenizer is None:
            raise UsageError(f"checkpoint {pretrained} has no tokenizer (it was trained on token ids, not text); "
                             "lm-eval tasks are text")
        self._max_length = int(max_length) if max_length is not None else int(config["max_seq_len"])
        if self._max_length > config["max_seq_len"]:
            log.warning("max_length %d exceeds the training sequence length %d", self._max_length,
                        config["max_seq_len"])
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = DEFAULT_BATCH_SIZE
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.checkpoint_config = config

    # ------------------------------------------------------------------ what lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return self.mk_tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.mk_tokenizer.name.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.mk_tokenizer.encode(string))

    def tok_decode(self, ids: Sequence[int]) -> str:
        if self.mk_tokenizer.decode is None:
            raise UsageError(f"tokenizer {self.mk_tokenizer.name!r} cannot decode ids to text")
        return self.mk_tokenizer.decode(list(ids))

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """Each request's summed continuation log-probability and whether it is the greedy continuation."""
        windows = []
        for _, context, continuation in requests:
            if not continuation:
                windows.append(None)
                continue
            if len(continuation) > self.max_length:
                raise UsageError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            windows.append((whole, len(continuation)))
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        order = sorted((i for i, w in enumerate(windows) if w is not None), key=lambda i: -len(windows[i][0]))
        size = override_bs or self.batch_size
        for start in range(0, len(order), size):
            chunk = order[start: start + size]
            logp = self._log_probs([windows[i][0][:-1] for i in chunk])
            for b, i in enumerate(chunk):
                whole, n = windows[i]
                positions = torch.arange(len(whole) - 1 - n, len(whole) - 1)
                target = torch.tensor(whole[-n:])
                rows = logp[b, positions]
                results[i] = (float(rows[torch.arange(n), target].double().sum()),
                              bool((rows.argmax(-1) == target).all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def _log_probs(self, inputs: list[list[int]]) -> torch.Tensor:
        """Log-softmax over the vocabulary for right-padded inputs (causal: padding never reaches a scored position)."""
        self.model.eval()
        width = max(len(x) for x in inputs)
        ids = torch.zeros(len(inputs), width, dtype=torch.long)
        for b, x in enumerate(inputs):
            ids[b, : len(x)] = torch.tensor(x)
        with autocast(self.precision, self._device):
            logits = self.model(ids.to(self._device))
        return F.log_softmax(logits.float(), dim=-1).cpu()

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood in lm-eval's disjoint rolling windows of ``max_length`` tokens."""
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(r)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for r, (ll, _) in zip(owner, scores):
            totals[r] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, stopped at the first stop sequence (cut off) or the end-of-document token."""
        from lm_eval.models.utils import handle_stop_sequences

        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0:
                log.warning("mkeval lm-eval model: sampling is not supported; generating greedily")
            until = handle_stop_sequences(gen_kwargs.get("until"), eos=None)
            budget = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context) or [self.prefix_token_id]
            generated: list[int] = []
            text = ""
            for _ in range(budget):
                logp = self._log_probs([(ids + generated)[-self.max_length:]])
                token = int(logp[0, -1].argmax())
                if token == self.eot_token_id:
                    break
                generated.append(token)
                text = self.tok_decode(generated)
                if any(s and s in text for s in until):
                    break
            for s in until:
                if s:
                    text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", req.args, text)
            out.append(text)
        return out


def lm_eval_model(checkpoint: str | Path, **model_args: Any) -> MkevalLM:
    """An lm-eval model for a checkpoint directory, e.g. ``lm_eval.simple_evaluate(model=lm_eval_model(DIR), ...)``."""
    return MkevalLM(pretrained=str(checkpoint), **model_args)


def run_lm_eval(checkpoint: str | Path, args: Sequence[str]) -> None:
    """lm-eval's command line (``lm-eval run``) on ``checkpoint`` with ``args`` (``--tasks``, ``--output_path`` ...)."""
    from lm_eval._cli.harness import HarnessCLI

    args = list(args)
    if args and args[0] == "--":
        args = args[1:]
    if args and args[0] == "run":
        args = args[1:]
    for i, a in enumerate(args):
        if a == "--model" or a.startswith("--model="):
            value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            if value != MODEL_NAME:
                raise UsageError(f"mkeval lm-eval evaluates mkeval checkpoints (--model {MODEL_NAME}); got --model {value}")
    read_config(checkpoint)  # a clear error before lm-eval starts
    identity = read_identity(checkpoint) if (Path(checkpoint) / "identity.json").is_file() else {}
    log.info("lm-eval on %s (%s)", checkpoint, identity.get("name", "unnamed cell"))
    argv = ["lm-eval", "run", "--model", MODEL_NAME, "--model_args", json.dumps({"pretrained": str(checkpoint)}), *args]
    cli = HarnessCLI()
    with _argv(argv):
        parsed = cli.parse_args()
    cli.execute(parsed)


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """lm-eval's parser reads ``sys.argv`` itself (its entry point takes no argument list)."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _register() -> None:
    import lm_eval.models  # noqa: F401  lm-eval adds its own models only to an empty registry: fill it first

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(MkevalLM)


_register()
