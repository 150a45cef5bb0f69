"""The effective-context probe against models whose dependence on the past is known by construction."""

import torch

from mkeval.engine.batching import make_windows
from mkeval.engine.probes import effective_context, probe_distances
from mkeval.registry.contracts import PrecisionSpec, TokenSplit

from helpers import Bigram

FP32 = PrecisionSpec(name="fp32", bits=32)


class PrefixMean(Bigram):
    """Logits from the mean embedding of tokens 0..t: every earlier token matters."""

    def forward(self, input_ids):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return self.head(torch.tanh(self.proj(h)))


def _windows(seq_len=32, vocab=50):
    stream = torch.randint(0, vocab, (20 * seq_len + 1,), generator=torch.Generator().manual_seed(0))
    return make_windows(TokenSplit(stream), seq_len)


def test_distances_cover_the_window():
    assert probe_distances(32) == [0, 1, 2, 4, 8, 16, 31]
    assert probe_distances(2) == [0, 1]


def test_a_bigram_model_depends_on_the_last_token_only():
    torch.manual_seed(0)
    out = effective_context(Bigram(50), _windows(), FP32, torch.device("cpu"))
    assert out["position"] == 31 and out["windows"] == 16 and out["distances"][0] == 0
    assert out["total_variation"][0] > 0.01
    assert out["total_variation"][1:] == [0.0] * (len(out["distances"]) - 1)  # bit-exactly nothing from the past
    assert out["max_abs_logit_change"][1:] == [0.0] * (len(out["distances"]) - 1)


def test_a_prefix_averaging_model_depends_on_every_distance():
    torch.manual_seed(0)
    out = effective_context(PrefixMean(50), _windows(), FP32, torch.device("cpu"))
    assert all(tv > 0 for tv in out["total_variation"])
    # a token's weight in the mean is 1/(t+1) wherever it is: about the same effect at every distance
    assert max(out["total_variation"]) < 3 * min(out["total_variation"])


def test_the_probe_leaves_training_mode_and_rng_alone():
    model = Bigram(50).train()
    state = torch.get_rng_state()
    effective_context(model, _windows(), FP32, torch.device("cpu"))
    assert model.training and torch.equal(torch.get_rng_state(), state)
