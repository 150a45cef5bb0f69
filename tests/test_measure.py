"""FLOP counting against hand counts, custom-op formulas, parameter counts and sizes."""

import torch
from torch import nn

from mkeval.measure import count_step_flops
from mkeval.models import count_parameters, model_size_mb


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
