"""How far back can a fine-tuned model see? A keyword at a fixed distance before the end.

Each example is 6 random words plus a separator; label 1 puts "good" at ``distance`` tokens
before the separator (1 = the last word). Every model gets the same data, tokenizer and
fine-tuning recipe (the protocol's, with lr 3e-3 and 6 epochs), from scratch at size tiny.
Run: ``python tools/keyword_probe.py --models bk,mamba,transformer``.
"""

from __future__ import annotations

import argparse
import random

import torch

from mkeval import Protocol
from mkeval.engine.finetune import finetune, make_kind, predict
from mkeval.engine.models import build_model
from mkeval.registry.manager import get_registry
from mkeval.data.taskspec import LocalLayout, TaskConfig
from mkeval.data.tokenizers import word_tokenizer

WORDS = [f"w{i}" for i in range(30)]


def rows(n: int, seed: int, distance: int | None) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sent = rng.sample(WORDS, 6)
        label = rng.random() < 0.5
        if label:
            sent[6 - distance if distance else rng.randrange(6)] = "good"
        out.append({"sentence": " ".join(sent), "_label": int(label), "_id": str(i), "_where": f"probe:{i}"})
    return out


def accuracy(model_name: str, distance: int | None, seed: int = 0) -> float:
    fp32 = get_registry().get("precision", "fp32")
    cfg = TaskConfig(name="probe", kind="classification", metrics=("accuracy",), inputs=("{sentence}",),
                     label="label", labels=(0, 1), local=(LocalLayout(format="jsonl", files={"eval": ("-",)}),))
    tok = word_tokenizer(WORDS + ["good"])
    protocol = Protocol(ft_lr=3e-3, ft_epochs=6, ft_batch_size=16, ft_max_len=16)
    kind = make_kind(cfg, tok, 16, protocol)
    model = build_model(model_name, tok.vocab_size, 16, size="tiny", seed=seed)
    train, test = rows(256, seed, distance), rows(128, seed + 1000, distance)
    head, _ = finetune(model, kind, [e for i, r in enumerate(train) for e in kind.encode(i, r)], protocol, seed,
                       fp32, torch.device("cpu"))
    records = predict(model, kind, head, test, [e for i, r in enumerate(test) for e in kind.encode(i, r)], 32, fp32,
                      torch.device("cpu"))
    return sum(r["prediction"] == r["reference"] for r in records) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bk,mamba,transformer")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    distances = [1, 2, 3, 4, 6, None]
    print("model        " + "  ".join(f"d={d or 'any':>3}" for d in distances))
    for name in args.models.split(","):
        accs = [sum(accuracy(name, d, int(s)) for s in args.seeds.split(",")) / len(args.seeds.split(","))
                for d in distances]
        print(f"{name:12s} " + "  ".join(f"{a:5.3f}" for a in accs), flush=True)


if __name__ == "__main__":
    main()
