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
from .specs import PrecisionSpec
from .taskspec import TaskConfig, canon, render, template_fields
from .tokenizers import Tokenizer


def context_for(config: TaskConfig, row: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    prompt = config.prompt
    examples = [render(prompt.text, s, s["_where"]) + prompt.target_delimiter
                + render(prompt.choices[s["_label"]], s, s["_where"]) for s in shots]
    text = render(prompt.text, row, row["_where"])
    return prompt.description + "".join(e + prompt.fewshot_delimiter for e in examples) + text


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context move to the continuation."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def score_prompt(model: nn.Module, config: TaskConfig, tok: Tokenizer, rows: list[dict[str, Any]],
                 shots: list[dict[str, Any]], max_len: int, batch_size: int, precision: PrecisionSpec,
                 device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prediction records (with each option's log-likelihood) and notes on the scoring."""
    model.eval()
    prompt = config.prompt
    labels = [canon(v) for v in config.labels]
    items: list[tuple[int, list[int], int]] = []  # (row, input ids, number of continuation tokens)
    truncated = 0
    for r, row in enumerate(rows):
        context = context_for(config, row, shots)
        for choice in prompt.choices:
            ctx, cont = encode_pair(tok, context, prompt.target_delimiter + render(choice, row, row["_where"]))
            whole = (ctx + cont)[-(max_len + 1):]
            truncated += len(ctx) + len(cont) > max_len + 1
            items.append((r, whole, len(cont)))
    loglik = torch.empty(len(items), dtype=torch.float64)
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        width = max(len(w) - 1 for _, w, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, (_, w, _) in enumerate(chunk):
            ids[b, : len(w) - 1] = torch.tensor(w[:-1])
        with autocast(precision, device):
            logits = model(ids.to(device))
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        for b, (_, w, n) in enumerate(chunk):
            positions = torch.arange(len(w) - 1 - n, len(w) - 1)
            loglik[i + b] = logp[b, positions, torch.tensor(w[-n:])].double().sum() if n else 0.0
    k = len(prompt.choices)
    records, ties = [], 0
    for r, row in enumerate(rows):
        values = loglik[r * k: (r + 1) * k]
        best = int(values.argmax())
        ties += int((values == values[best]).sum()) > 1
        records.append({"id": row["_id"], "prediction": labels[best], "reference": labels[row["_label"]],
                        "loglikelihoods": [float(v) for v in values]})
    notes = {"shots": len(shots), "truncated_inputs": truncated, "ties": ties}
    if not any(template_fields(c) for c in prompt.choices):  # fixed answers (MMLU's letters)
        distinct = len({tuple(encode_pair(tok, "x", prompt.target_delimiter + c)[1]) for c in prompt.choices})
        notes["choices_distinct_under_tokenizer"] = distinct == k
    return records, notes
