"""The CPU small-batch linear layer: same results as ``nn.Linear``, and only inside the engine."""

import pytest
import torch

from rain_core.lm import _SMALL_BATCH_MATMUL, _use_small_batch_linear


def _model(bias: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias), torch.nn.ReLU(), torch.nn.Linear(40, 8, bias=bias))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (7, 24), (32, 24), (33, 24), (3, 1, 24), (2, 5, 24), (24,)])
def test_small_batch_linear_matches_nn_linear(bias, shape):
    plain, fast = _model(bias), _model(bias)
    assert _use_small_batch_linear(fast) == 2
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = plain(x)
        outside = fast(x)  # the engine's switch is off: exactly nn.Linear
        token = _SMALL_BATCH_MATMUL.set(True)
        try:
            inside = fast(x)
        finally:
            _SMALL_BATCH_MATMUL.reset(token)
    assert torch.equal(outside, expected)
    assert inside.shape == expected.shape and inside.is_contiguous()
    assert torch.allclose(inside, expected, rtol=1e-5, atol=1e-5)


def test_swapping_twice_is_harmless_and_gradients_still_flow():
    model = _model(True)
    assert _use_small_batch_linear(model) == 2
    assert _use_small_batch_linear(model) == 2
    x = torch.randn(3, 24, requires_grad=True)
    model(x).sum().backward()  # outside the engine it trains like nn.Linear
    assert x.grad is not None and model[0].weight.grad is not None
