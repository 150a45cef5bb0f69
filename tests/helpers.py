"""Small models for tests: a causal bigram model, one that fails, one whose loss is NaN."""

import torch
from torch import nn


class Bigram(nn.Module):
    """logits[t] depend on token t only: causal by construction, learns a Markov chain."""

    def __init__(self, vocab_size: int, d_model: int = 16, nan: bool = False, crash: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.nan, self.crash = nan, crash

    def hidden_states(self, input_ids):
        return torch.tanh(self.proj(self.embed(input_ids)))

    def forward(self, input_ids):
        if self.crash:
            raise RuntimeError("deliberate failure in forward")
        logits = self.head(self.hidden_states(input_ids))
        return logits * float("nan") if self.nan and self.training else logits


def bigram_spec(name="bigram", **kwargs):
    from mkeval import ModelSpec

    return ModelSpec(name=name, build=lambda vocab_size, max_seq_len, size=None, **o: Bigram(vocab_size, **{**kwargs, **o}),
                     size_knob="d_model")
