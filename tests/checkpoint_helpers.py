"""Tiny trained checkpoints for the interop tests (checkpoints, export, lm-eval, perplexity)."""

from __future__ import annotations

from pathlib import Path

import torch

# A few lines of English with capitals and punctuation, for tokenizers that must not depend on
# the shared benchmark files (the real-text tests read those and skip without them).
TEXT = [
    "The quick brown fox jumps over the lazy dog .",
    "A. Paris  B. London  C. Rome  D. Madrid",
    "Answer: A",
    "The following are multiple choice questions ( with answers ) about anatomy .",
    "Which of the following is a bone of the skull ? B. the parietal bone",
    "In 1969 , the first people walked on the Moon ; it took 3 days to get there .",
    "She said : \" it is n't the same river , and he is n't the same man . \"",
    "C. Both of the above  D. None of the above",
    "",
    "Numbers such as 3 @,@ 000 and 1 @.@ 5 appear in WikiText .",
] * 3


def fitted_tokenizer(spec: str, lines: list[str] | None = None):
    from mkeval.data.tokenizers import fit_state, make_tokenizer

    lines = TEXT if lines is None else lines
    return make_tokenizer(spec, fit_state(spec, lines))


def trained_model(name: str, tokenizer, lines: list[str] | None = None, seq_len: int = 32, steps: int = 8,
                  seed: int = 0, **options):
    """A tiny model after a few AdamW steps on ``lines`` (weights away from their initialisation)."""
    import mkeval

    lines = TEXT if lines is None else lines
    model = mkeval.build_model(name, tokenizer.vocab_size, seq_len, seed=seed, **options)
    stream = [tokenizer.eos_id]
    for line in lines:
        stream += tokenizer.encode(line) + [tokenizer.eos_id]
    while len(stream) < 4 * (seq_len + 1):
        stream += stream
    data = torch.tensor(stream)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (4,), generator=gen)
        batch = torch.stack([data[s: s + seq_len + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def make_checkpoint(directory: Path, name: str, tokenizer, lines: list[str] | None = None, seq_len: int = 32,
                    steps: int = 8, **options):
    """Train a tiny ``name`` model and write its checkpoint directory; returns ``(directory, model)``."""
    from mkeval.engine.checkpoint import write_checkpoint

    model = trained_model(name, tokenizer, lines, seq_len, steps, **options)
    identity = {"name": f"{name}-test", "cell_hash": "0" * 16, "protocol_hash": "1" * 16, "dataset": "test",
                "seq_len": seq_len, "seed": 0, "precision": "fp32"}
    write_checkpoint(directory, model, name=name, vocab_size=tokenizer.vocab_size, max_seq_len=seq_len,
                     options=options, tokenizer=tokenizer, identity=identity)
    return directory, model
