"""The optimiser setup and the schedule, against hand computations; a real learning check."""

import math

import pytest
import torch
from torch import nn

import mkeval
from mkeval import Protocol
from mkeval.engine.loop import lr_factor, parameter_groups


class Marked(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(3, 3))

    def no_weight_decay(self):
        return {"scale"}


def test_no_decay_on_norms_biases_embeddings_and_marked_parameters():
    groups, no_decay = parameter_groups(Marked(), 0.1)
    assert set(no_decay) == {"embed.weight", "lin.bias", "norm.weight", "norm.bias", "scale"}
    decay_group, plain_group = groups
    assert decay_group["weight_decay"] == 0.1 and plain_group["weight_decay"] == 0.0
    assert len(decay_group["params"]) == 1 and decay_group["params"][0].shape == (4, 4)


def test_warmup_then_cosine_by_hand():
    p = Protocol(warmup_steps=4, min_lr_ratio=0.1)
    total = 14
    assert [lr_factor(s, total, p) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine from step 4 (factor 1) to step 13 (factor 0.1) over 9 steps
    for s in range(4, 14):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 9))
        assert lr_factor(s, total, p) == pytest.approx(expected)
    assert lr_factor(13, total, p) == pytest.approx(0.1)


LEARNING = Protocol(batch_size=16, seq_lens=(64,), train_tokens=16 * 64 * 150, eval_interval=50,
                    eval_tokens=16_384, test_tokens=32_768, lr=3e-3, warmup_steps=10)


@pytest.mark.slow
@pytest.mark.parametrize("model,within", [("transformer", 0.10), ("bk", 0.15), ("mamba", 0.15)])
def test_tiny_models_learn_markov_close_to_the_optimum(registry, tmp_path, model, within):
    result = mkeval.run(models=model, datasets="markov", protocol=LEARNING, output_dir=tmp_path,
                        registry=registry, device="cpu")
    [r] = result.results
    assert r.optimal_perplexity == pytest.approx(15.416, abs=1e-3)
    assert r.test_perplexity < (1 + within) * r.optimal_perplexity
    assert r.test_perplexity > r.optimal_perplexity * 0.99  # no model beats the source's entropy
