"""int8 matmuls with one activation scale per token: close to fp32, and a row's result never depends on
the other rows of its batch (which per-tensor dynamic quantization cannot promise)."""
import pytest
import torch
from torch import nn

from xlprompt.engine.int8_token import TokenInt8Linear, int8_matmul_available, token_int8_linears

pytestmark = pytest.mark.skipif(not int8_matmul_available(), reason="torch has no CPU int8 matmul")


def test_close_to_fp32_and_exact_on_the_grid():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    q = TokenInt8Linear(linear)
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        y, yq = linear(x), q(x)
    assert yq.shape == y.shape and yq.dtype == y.dtype
    assert (yq - y).abs().max() < 0.02 * y.abs().max()
    # weights and activations that are already on the int8 grids are reproduced exactly
    with torch.no_grad():
        linear.weight.copy_(torch.randint(-127, 128, (40, 48)).float() / 127)
        linear.weight[:, 0] = 1.0  # each output channel's max |w| is 1: its scale is exactly 1/127
        linear.bias.zero_()
    grid = torch.randint(-127, 128, (20, 48)).float()
    grid[:, 0] = 127  # each row's max |x| is 127, so its scale is exactly 1
    with torch.inference_mode():
        torch.testing.assert_close(TokenInt8Linear(linear)(grid), linear(grid), rtol=1e-5, atol=1e-4)


def test_a_row_does_not_depend_on_its_batch():
    torch.manual_seed(1)
    q = TokenInt8Linear(nn.Linear(32, 16))
    rows = torch.randn(30, 32)
    outlier = torch.cat([rows, 1000 * torch.randn(1, 32)])
    with torch.inference_mode():
        alone = torch.cat([q(rows[i:i + 1]) for i in range(30)])  # one row: padded to _int_mm's minimum
        together = q(rows)
        with_outlier = q(outlier)[:30]
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(with_outlier, together, rtol=0, atol=1e-5)


def test_swap_is_undone():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    before = [type(m) for m in model.modules()]
    with token_int8_linears(model) as n:
        assert n == 2 and sum(isinstance(m, TokenInt8Linear) for m in model.modules()) == 2
        model(torch.randn(2, 8))
    assert [type(m) for m in model.modules()] == before
