"""FLOP counting against hand counts, custom-op formulas, coverage, parameter counts and sizes."""

import pytest
import torch
from torch import nn

from mkeval.engine.measure import count_step_flops
from mkeval.engine.models import count_parameters, model_size_mb


def test_linear_flops_by_hand():
    model = nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 10, 32)
    flops = count_step_flops(model, x, lambda y: y.sum())
    assert flops.forward == 2 * 4 * 10 * 32 * 16
    # backward of a matmul: the weight gradient only (the input needs none) = same count
    assert flops.backward == 2 * 4 * 10 * 32 * 16
    assert model.weight.grad is None  # the probe leaves no gradients behind


@torch.library.custom_op("mkevaltest::square", mutates_args=())
def _square(x: torch.Tensor) -> torch.Tensor:
    return x * x


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


_square.register_autograd(lambda ctx, grad: 2 * grad * ctx.saved_tensors[0], setup_context=_setup)


def test_plugin_flop_formulas_are_used():
    class Squarer(nn.Module):
        def forward(self, x):
            return torch.ops.mkevaltest.square(x)

    def formula(x_shape, out_shape=None, **kwargs):  # FlopCounterMode passes shapes
        return 7 * torch.Size(out_shape).numel()

    x = torch.randn(3, 5, requires_grad=True)
    plain = count_step_flops(Squarer(), x, lambda y: y.sum())
    counted = count_step_flops(Squarer(), x, lambda y: y.sum(), {torch.ops.mkevaltest.square: formula})
    assert plain.forward == 0 and counted.forward == 7 * 15
    # coverage: the op did arithmetic and had no formula, so the result names it; with one, it doesn't
    assert plain.uncounted == {"mkevaltest.square": 1}
    assert counted.uncounted == {} and counted.counted == {"mkevaltest.square": 7 * 15}


# --------------------------------------------------------------------------- convolutions
def _conv_flops_by_hand(batch, c_in, c_out, groups, kernel, positions):
    """2 per multiply-add: each output (batch, channel, position) sums kernel x C_in/groups products."""
    return 2 * batch * c_out * positions * kernel * (c_in // groups)


def test_depthwise_conv_backward_is_twice_forward():
    # Mamba's causal conv: depthwise, padding d_conv - 1 on both sides (L + 3 output positions)
    conv = nn.Conv1d(128, 128, 4, groups=128, padding=3)
    x = torch.randn(2, 128, 64, requires_grad=True)
    flops = count_step_flops(conv, x, lambda y: y.sum())
    assert flops.forward == _conv_flops_by_hand(2, 128, 128, 128, 4, 64 + 3)
    # grad input + grad weight, each the forward's multiply-adds (torch alone counts 129x)
    assert flops.backward == 2 * flops.forward


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("input_grad", [True, False])
def test_grouped_conv_matches_hand_count_and_its_groups_as_dense_convs(transposed, input_grad):
    c_in, c_out, groups, k, length, batch = 12, 18, 3, 5, 20, 2
    cls = nn.ConvTranspose1d if transposed else nn.Conv1d
    conv = cls(c_in, c_out, k, groups=groups, padding=2, bias=False)
    x = torch.randn(batch, c_in, length, requires_grad=input_grad)
    flops = count_step_flops(conv, x, lambda y: y.sum())
    # padding 2 with kernel 5 keeps the length, so positions are `length` either way
    by_hand = _conv_flops_by_hand(batch, c_in, c_out, groups, k, length)
    assert flops.forward == by_hand
    assert flops.backward == by_hand * (2 if input_grad else 1)
    # independent reference: a grouped conv is `groups` dense convs side by side, and torch's
    # own formulas are right for dense ones
    dense = [cls(c_in // groups, c_out // groups, k, padding=2, bias=False) for _ in range(groups)]
    per = c_in // groups
    parts = [count_step_flops(d, x[:, i * per:(i + 1) * per].detach().requires_grad_(input_grad), lambda y: y.sum())
             for i, d in enumerate(dense)]
    assert flops.forward == sum(p.forward for p in parts)
    assert flops.backward == sum(p.backward for p in parts)


# --------------------------------------------------------------------------- coverage
def test_lstm_recurrence_is_reported_as_uncounted():
    class LSTMModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.head = nn.Linear(32, 10, bias=False)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    flops = count_step_flops(LSTMModel(), torch.randn(2, 7, 16), lambda y: y.sum())
    # the head is counted; the recurrence (mkldnn_rnn_layer on CPU builds with oneDNN,
    # _thnn_fused_lstm_cell elsewhere) has no formula and must be named, forward and backward
    assert flops.forward == 2 * 2 * 7 * 32 * 10
    recurrent = [op for op in flops.uncounted if "rnn" in op or "lstm" in op]
    assert recurrent, flops.uncounted
    assert any("backward" in op for op in recurrent)


def test_views_and_copies_are_not_reported_and_elementwise_work_is_sized():
    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU())
    x = torch.randn(3, 5, 8)
    # transpose, reshape (a copy), slicing: no arithmetic, so nothing is uncounted
    flops = count_step_flops(model, x, lambda y: y.transpose(0, 1).reshape(-1)[::2].sum())
    assert flops.uncounted == {}
    assert flops.counted == {"aten.mm": 2 * (2 * 15 * 8 * 6)}
    # elements by hand: forward relu (90) and the sum over the 45 kept; backward relu's (90)
    assert flops.elementwise_elements_forward == 90 + 45
    assert flops.elementwise_elements_backward == 90


def test_parameter_counts_with_tied_embeddings():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 8)
            self.pos = nn.Embedding(20, 8)
            self.lin = nn.Linear(8, 8)
            self.head = nn.Linear(8, 100, bias=False)
            self.head.weight = self.embed.weight

    counts = count_parameters(Tied())
    assert counts.total == 100 * 8 + 20 * 8 + 8 * 8 + 8
    assert counts.non_embedding == 8 * 8 + 8
    assert model_size_mb(Tied()) == (100 * 8 + 20 * 8 + 8 * 8 + 8) * 4 / 2**20
