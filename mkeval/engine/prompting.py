"""Zero- and few-shot multiple choice by log-likelihood, in lm-evaluation-harness's format.

The context is ``description + shot_1 + delim + ... + shot_k + delim + question``, each shot
being ``text + target_delimiter + answer`` from the task's few-shot split taken in order
(lm-evaluation-harness's ``first_n`` sampler), and each option is scored as the summed log
probability of ``target_delimiter + choice`` after it; the prediction is the highest (``acc``).
Context and continuation are split as lm-evaluation-harness's ``_encode_pair`` does, and an
over-long input keeps its last tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast
from ..registry.contracts import PrecisionSpec
from ..data.taskspec import TaskConfig, canon, render
from ..data.tokenizers import Tokenizer


def context_for(config: TaskConfig, row: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    prompt = config.prompt
    examples = [render(prompt.text, s, s["_where"]) + prompt.target_delimiter
                + render(prompt.choices[s["_label"]], s, s["_where"]) for s in shots]
    text = render(prompt.text, row, row["_where"])
    return prompt.description + "".join(e + prompt.fewshot_delimiter for e in examples) + text


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing whitespace of the context moves to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def fit_prompt(config: TaskConfig, tok: Tokenizer, row: dict[str, Any], shots: list[dict[str, Any]],
               max_len: int) -> tuple[list[tuple[list[int], list[int]]], int, bool]:
    """Each option's (context ids, continuation ids) for ``row`` with as many of ``shots`` (the
    first ones) as fit in ``max_len + 1`` tokens: whole shots are dropped, never cut inside one.
    Returns the pairs, the number of shots used, and whether the input still had to be cut (then
    it keeps its last tokens, as lm-evaluation-harness does)."""
    prompt = config.prompt
    for used in range(len(shots), -1, -1):
        context = context_for(config, row, shots[:used])
        pairs = [encode_pair(tok, context, prompt.target_delimiter + render(c, row, row["_where"]))
                 for c in prompt.choices]
        if max(len(ctx) + len(cont) for ctx, cont in pairs) <= max_len + 1:
            return pairs, used, False
    return pairs, 0, True


def degenerate_reason(tok: Tokenizer, continuations: list[list[int]]) -> str | None:
    """Why the options cannot be told apart by the tokenizer, or None: two options encode to the
    same ids, or an option holds the unknown token (the model would score ``<unk>``, not the option)."""
    unk = tok.info.get("unk_id")
    if unk is not None and any(unk in c for c in continuations):
        return "an option encodes to the unknown token"
    if len({tuple(c) for c in continuations}) < len(continuations):
        return "two options encode to the same tokens"
    return None


@torch.no_grad()
def score_prompt(model: nn.Module, config: TaskConfig, tok: Tokenizer, rows: list[dict[str, Any]],
                 shots: list[dict[str, Any]], max_len: int, batch_size: int, precision: PrecisionSpec,
                 device: torch.device) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """Prediction records (with each option's log-likelihood) and notes on the scoring.

    When the tokenizer cannot tell some example's options apart (``degenerate_reason``), nothing
    is scored: the records are None and ``notes["degenerate"]`` says why, since any accuracy would
    only count which option comes first. Notes count the shots each prompt really held, the
    prompts cut inside the question, and ties.
    """
    model.eval()
    prompt = config.prompt
    labels = [canon(v) for v in config.labels]
    items: list[tuple[int, list[int], int]] = []  # (row, input ids, number of continuation tokens)
    truncated, shots_used, degenerate = 0, [], {}
    for r, row in enumerate(rows):
        pairs, used, cut = fit_prompt(config, tok, row, shots, max_len)
        truncated += cut
        shots_used.append(used)
        reason = degenerate_reason(tok, [cont for _, cont in pairs])
        if reason is not None:
            degenerate[reason] = degenerate.get(reason, 0) + 1
        for ctx, cont in pairs:
            items.append((r, (ctx + cont)[-(max_len + 1):], len(cont)))
    notes: dict[str, Any] = {
        "shots": len(shots), "effective_shots": {"mean": sum(shots_used) / len(rows) if rows else 0.0,
                                                 "min": min(shots_used, default=0), "max": max(shots_used, default=0)},
        "prompts_with_fewer_shots": sum(1 for u in shots_used if u < len(shots)),
        "truncated_inputs": truncated, "truncated_share": truncated / len(rows) if rows else 0.0,
    }
    if degenerate:
        notes["degenerate"] = "; ".join(f"{reason} in {n} of {len(rows)} examples" for reason, n in degenerate.items())
        notes["degenerate"] += f" (tokenizer {tok.name!r}); choose a tokenizer that can represent every option"
        return None, notes
    loglik = torch.empty(len(items), dtype=torch.float64)
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        width = max(len(w) - 1 for _, w, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, (_, w, _) in enumerate(chunk):
            ids[b, : len(w) - 1] = torch.tensor(w[:-1])
        with autocast(precision, device):
            logits = model(ids.to(device))
        logp = F.log_softmax(logits.float(), dim=-1)
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=logp.device)
        for b, (_, w, n) in enumerate(chunk):  # only the answer tokens' sums leave the device, once per batch
            if n:
                positions = torch.arange(len(w) - 1 - n, len(w) - 1, device=logp.device)
                sums[b] = logp[b, positions, torch.tensor(w[-n:], device=logp.device)].double().sum()
        loglik[i: i + len(chunk)] = sums.cpu()
    k = len(prompt.choices)
    records, ties = [], 0
    for r, row in enumerate(rows):
        values = loglik[r * k: (r + 1) * k]
        best = int(values.argmax())
        tied = int((values == values[best]).sum()) > 1
        ties += tied
        records.append({"id": row["_id"], "prediction": labels[best], "reference": labels[row["_label"]],
                        "loglikelihoods": [float(v) for v in values], "shots": shots_used[r], "tie": tied})
    notes["ties"] = ties
    return records, notes
