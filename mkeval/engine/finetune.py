"""Fine-tuning a task head on the backbone's hidden states, one small class per task kind.

Every kind turns a row into one or more token sequences, puts a head on
``model.hidden_states`` and turns scores into predictions. Sequences are the text segments
joined by the tokenizer's end-of-text id (which also ends the sequence), right-padded; a
causal model's last non-padding position has read the whole input, so sequence-level heads
read it. The loop (AdamW, linear warmup and decay, the same for every model) is ``finetune``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CellFailed
from .precision import autocast
from ..protocol import Protocol
from ..registry.contracts import PrecisionSpec
from ..data.taskspec import TaskConfig, canon, lookup, render
from ..data.tokenizers import Tokenizer
from .loop import Stepper, parameter_groups

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """One model input: ``seqs`` (one per option), its target, and what prediction needs."""

    row: int  # index of the row it came from
    seqs: list[list[int]]
    target: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def join(segments: list[list[int]], sep: int, max_len: int) -> list[int]:
    """``seg1 SEP seg2 SEP ...`` in at most ``max_len`` tokens, trimming the longest segment first."""
    segs = [list(s) for s in segments]
    while sum(map(len, segs)) + len(segs) > max_len:
        longest = max(range(len(segs)), key=lambda i: len(segs[i]))
        if not segs[longest]:
            raise ValueError(f"max_len {max_len} cannot hold {len(segs)} separators")
        segs[longest].pop()
    return [t for s in segs for t in (*s, sep)]


class Kind:
    """Base: sequence-level heads over the last non-padding position."""

    outputs = 1

    def __init__(self, config: TaskConfig, tokenizer: Tokenizer, max_len: int, protocol: Protocol) -> None:
        self.config, self.tok, self.max_len, self.protocol = config, tokenizer, max_len, protocol

    def segments(self, row: dict[str, Any]) -> list[list[int]]:
        return [self.tok.encode(render(t, row, row["_where"])) for t in self.config.inputs]

    def encode(self, index: int, row: dict[str, Any]) -> list[Encoded]:
        return [Encoded(index, [join(self.segments(row), self.tok.eos_id, self.max_len)], row.get("_label"))]

    def head(self, dim: int) -> nn.Module:
        return nn.Linear(dim, self.outputs)

    def scores(self, head: nn.Module, hidden: torch.Tensor, last: torch.Tensor, batch: list[Encoded]) -> torch.Tensor:
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return head(picked.float())

    def loss(self, scores: torch.Tensor, batch: list[Encoded]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, rows: list[dict[str, Any]], encoded: list[Encoded], scores: list[torch.Tensor]) -> list[dict]:
        raise NotImplementedError

    def record(self, row: dict[str, Any], prediction: Any, reference: Any, **extra: Any) -> dict[str, Any]:
        out = {"id": row["_id"], "prediction": prediction, "reference": reference, **extra}
        if self.config.group:
            out["group"] = str(lookup(row, self.config.group, row["_where"]))
        return out


class Classification(Kind):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.labels = [canon(v) for v in self.config.labels]
        self.outputs = len(self.labels)

    def loss(self, scores, batch):
        return F.cross_entropy(scores, torch.tensor([e.target for e in batch], device=scores.device))

    def predict(self, rows, encoded, scores):
        return [self.record(rows[e.row], self.labels[int(s.argmax())], self.labels[e.target])
                for e, s in zip(encoded, scores)]


class Regression(Kind):
    def scores(self, head, hidden, last, batch):
        return super().scores(head, hidden, last, batch).squeeze(-1)

    def loss(self, scores, batch):
        return F.mse_loss(scores, torch.tensor([e.target for e in batch], device=scores.device, dtype=scores.dtype))

    def predict(self, rows, encoded, scores):
        return [self.record(rows[e.row], float(s), e.target) for e, s in zip(encoded, scores)]


class MultipleChoice(Kind):
    """One score per option (``context SEP option SEP``), softmax over the options."""

    def options(self, row: dict[str, Any]) -> list[str]:
        where = row["_where"]
        if self.config.choices_field:
            return [str(o) for o in lookup(row, self.config.choices_field, where)]
        return [render(t, row, where) for t in self.config.choices]

    def encode(self, index, row):
        where = row["_where"]
        options = self.options(row)
        if self.config.placeholder:  # ReCoRD: the last input is the query, with the option in its blank
            context = [self.tok.encode(render(t, row, where)) for t in self.config.inputs[:-1]]
            query = render(self.config.inputs[-1], row, where)
            seqs = [join(context + [self.tok.encode(query.replace(self.config.placeholder, o))], self.tok.eos_id,
                         self.max_len) for o in options]
        else:
            context = self.segments(row)
            seqs = [join(context + [self.tok.encode(o)], self.tok.eos_id, self.max_len) for o in options]
        target = row.get("_label")
        if self.config.answers:  # several gold answers: train towards the first option that is one
            golds = set(lookup(row, self.config.answers, where))
            target = next((i for i, o in enumerate(options) if o in golds), None)
        return [Encoded(index, seqs, target, {"options": options})]

    def scores(self, head, hidden, last, batch):
        flat = super().scores(head, hidden, last, batch).squeeze(-1)
        width = max(len(e.seqs) for e in batch)
        out = flat.new_full((len(batch), width), -math.inf)
        i = 0
        for b, e in enumerate(batch):
            out[b, : len(e.seqs)] = flat[i: i + len(e.seqs)]
            i += len(e.seqs)
        return out

    def loss(self, scores, batch):
        keep = [i for i, e in enumerate(batch) if e.target is not None]
        if not keep:
            return scores.sum() * 0.0
        return F.cross_entropy(scores[keep], torch.tensor([batch[i].target for i in keep], device=scores.device))

    def predict(self, rows, encoded, scores):
        out = []
        for e, s in zip(encoded, scores):
            best = int(s[: len(e.seqs)].argmax())
            row = rows[e.row]
            if self.config.answers:
                out.append(self.record(row, e.meta["options"][best], list(lookup(row, self.config.answers, row["_where"]))))
            else:
                labels = [canon(v) for v in self.config.labels] or [str(i) for i in range(len(e.seqs))]
                out.append(self.record(row, labels[best], labels[e.target]))
        return out


class Span(Kind):
    """Start/end logits over the passage; long passages are read in windows (document striding)."""

    outputs = 2

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if self.tok.encode_offsets is None:
            raise CellFailed(f"task {self.config.name!r} needs token offsets, which tokenizer {self.tok.name!r} lacks")

    def encode(self, index, row):
        where = row["_where"]
        question = self.tok.encode(str(lookup(row, self.config.question, where)))[: self.max_len // 2]
        context = str(lookup(row, self.config.context, where))
        ids, offsets = self.tok.encode_offsets(context)
        width = self.max_len - len(question) - 2
        # windows overlap by at least half, so an answer never falls only across a boundary
        stride = max(1, min(self.protocol.ft_doc_stride, width // 2))
        answers = lookup(row, self.config.answers, where)
        starts = row.get("answer_starts") or []
        gold = None
        if answers and starts:
            a, b = starts[0], starts[0] + len(answers[0])
            tokens = [i for i, (s, e) in enumerate(offsets) if e > a and s < b]
            gold = (tokens[0], tokens[-1]) if tokens else None
        out, first = [], 0
        while True:
            window = ids[first: first + width]
            null = len(question)  # the separator after the question: "no answer in this window"
            seq = question + [self.tok.eos_id] + window + [self.tok.eos_id]
            target = (null, null)
            if gold and first <= gold[0] and gold[1] < first + len(window):
                target = (gold[0] - first + null + 1, gold[1] - first + null + 1)
            out.append(Encoded(index, [seq], target, {"first": first, "offset": null + 1, "length": len(window),
                                                       "offsets": offsets, "context": context}))
            if first + width >= len(ids):
                return out
            first += stride

    def scores(self, head, hidden, last, batch):
        logits = head(hidden.float())  # [B, L, 2]
        mask = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        for b, e in enumerate(batch):
            mask[b, e.meta["offset"] - 1: e.meta["offset"] + e.meta["length"]] = True
        return logits.masked_fill(~mask[..., None], -1e9)

    def loss(self, scores, batch):
        starts = torch.tensor([e.target[0] for e in batch], device=scores.device)
        ends = torch.tensor([e.target[1] for e in batch], device=scores.device)
        return (F.cross_entropy(scores[..., 0], starts) + F.cross_entropy(scores[..., 1], ends)) / 2

    def predict(self, rows, encoded, scores):
        best: dict[int, tuple[float, str]] = {}
        longest = self.protocol.ft_max_answer_len
        for e, s in zip(encoded, scores):
            o, n = e.meta["offset"], e.meta["length"]
            start, end = s[o: o + n, 0], s[o: o + n, 1]
            pair = start[:, None] + end[None, :]
            band = torch.ones(n, n, dtype=torch.bool).triu().tril(longest - 1)
            pair = pair.masked_fill(~band.to(pair.device), -math.inf)
            flat = int(pair.argmax())
            i, j = divmod(flat, n)
            value = float(pair[i, j])
            offsets = e.meta["offsets"]
            text = e.meta["context"][offsets[e.meta["first"] + i][0]: offsets[e.meta["first"] + j][1]]
            if e.row not in best or value > best[e.row][0]:
                best[e.row] = (value, text)
        return [self.record(rows[r], best[r][1], list(lookup(rows[r], self.config.answers, rows[r]["_where"])))
                for r in sorted(best)]


KIND_CLASSES: dict[str, type[Kind]] = {"classification": Classification, "regression": Regression,
                                       "multiple_choice": MultipleChoice, "span": Span}


def make_kind(config: TaskConfig, tokenizer: Tokenizer, max_len: int, protocol: Protocol) -> Kind:
    return KIND_CLASSES[config.kind](config, tokenizer, max_len, protocol)


# --------------------------------------------------------------------------- the loop
def _forward(model: nn.Module, kind: Kind, head: nn.Module, batch: list[Encoded], device: torch.device,
             precision: PrecisionSpec) -> torch.Tensor:
    seqs = [s for e in batch for s in e.seqs]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    last = torch.tensor([len(s) - 1 for s in seqs], device=device)
    with autocast(precision, device):
        hidden = model.hidden_states(ids.to(device))
    return kind.scores(head, hidden, last, batch)


@dataclass
class FinetuneOutcome:
    steps: int
    epochs: int
    losses: list[float]  # mean training loss per epoch
    seconds: float
    skipped_nonfinite: int


def hidden_size(model: nn.Module, device: torch.device) -> int:
    with torch.no_grad():
        return int(model.hidden_states(torch.zeros(1, 1, dtype=torch.long, device=device)).shape[-1])


def finetune(model: nn.Module, kind: Kind, train: list[Encoded], protocol: Protocol, seed: int,
             precision: PrecisionSpec, device: torch.device) -> tuple[nn.Module, FinetuneOutcome]:
    """Train ``model`` and a fresh head on ``train``; returns the head. Same recipe for every model."""
    torch.manual_seed(seed)
    head = kind.head(hidden_size(model, device)).to(device)
    groups, _ = parameter_groups(model, protocol.ft_weight_decay)
    groups.append({"params": list(head.parameters()), "weight_decay": protocol.ft_weight_decay})
    opt = torch.optim.AdamW(groups, lr=protocol.ft_lr, betas=protocol.betas, eps=protocol.eps)
    bs = protocol.ft_batch_size
    per_epoch = math.ceil(len(train) / bs)
    total = per_epoch * protocol.ft_epochs
    warmup = int(total * protocol.ft_warmup_ratio)

    def lr_at(step: int) -> float:  # linear warmup, then linear decay to 0
        return protocol.ft_lr * ((step + 1) / (warmup + 1) if step < warmup
                                 else max(0.0, (total - step) / max(1, total - warmup)))

    stepper = Stepper(opt, precision, device, lr_at, protocol.grad_clip, protocol.max_nonfinite,
                      [p for g in groups for p in g["params"]], what="fine-tuning")
    generator = torch.Generator().manual_seed(seed)
    model.train()
    head.train()
    losses, step, start = [], 0, time.perf_counter()
    for _ in range(protocol.ft_epochs):
        order = torch.randperm(len(train), generator=generator).tolist()
        total_loss, counted = 0.0, 0
        for i in range(0, len(order), bs):
            batch = [train[j] for j in order[i: i + bs]]
            loss = kind.loss(_forward(model, kind, head, batch, device, precision), batch)
            aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
            if aux is not None:  # e.g. MoE load balancing: the same objective as in pretraining
                loss = loss + aux
            if stepper.step(step, loss):
                total_loss, counted = total_loss + loss.item(), counted + 1
            step += 1
        losses.append(total_loss / counted if counted else math.nan)
    return head, FinetuneOutcome(total, protocol.ft_epochs, losses, time.perf_counter() - start, stepper.skipped)


@torch.no_grad()
def predict(model: nn.Module, kind: Kind, head: nn.Module, rows: list[dict[str, Any]], encoded: list[Encoded],
            batch_size: int, precision: PrecisionSpec, device: torch.device) -> list[dict[str, Any]]:
    """Per-example prediction records (``id``, ``prediction``, ``reference``) in row order."""
    model.eval()
    head.eval()
    scores: list[torch.Tensor] = []
    for i in range(0, len(encoded), batch_size):
        batch = encoded[i: i + batch_size]
        scores.extend(_forward(model, kind, head, batch, device, precision).float().cpu())
    return kind.predict(rows, encoded, scores)
