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


def _eager_and_compiled(monkeypatch):
    """The same layers' outputs with the compiled kernels and with XLPROMPT_KERNELS=0 (the eager ops)."""
    from xlprompt.engine import int8_token

    int8_token.fused_kernels.cache_clear()
    compiled = int8_token.fused_kernels()
    monkeypatch.setenv("XLPROMPT_KERNELS", "0")
    int8_token.fused_kernels.cache_clear()
    assert int8_token.fused_kernels() is None
    monkeypatch.delenv("XLPROMPT_KERNELS")
    int8_token.fused_kernels.cache_clear()
    return compiled


def test_the_compiled_kernels_give_the_eager_ops_bits(monkeypatch):
    """The int8 recipe (and so every calibrated threshold and the accuracy guard's result) must not depend on
    whether this machine could build the extension: shapes with and without 16-wide blocks, a tail, fewer
    rows than _int_mm's minimum, no bias, an all-zero row."""
    from xlprompt.engine import int8_token

    if _eager_and_compiled(monkeypatch) is None:
        pytest.skip("the int8 kernels cannot be built here (no C++ compiler or ninja)")
    torch.manual_seed(2)
    for features, out, rows, bias in ((384, 1536, 70, True), (53, 35, 5, False), (16, 8, 17, True), (7, 3, 40, True)):
        layer = TokenInt8Linear(nn.Linear(features, out, bias=bias))
        x = torch.randn(rows, features) * torch.rand(rows, 1) * 30
        x[0] = 0.0
        with torch.inference_mode():
            assert int8_token.fused_kernels() is not None
            fast = layer(x)
            monkeypatch.setenv("XLPROMPT_KERNELS", "0")
            int8_token.fused_kernels.cache_clear()
            eager = layer(x)
            monkeypatch.delenv("XLPROMPT_KERNELS")
            int8_token.fused_kernels.cache_clear()
        assert torch.equal(fast, eager), (features, out, rows, bias)


def test_without_a_compiler_int8_runs_the_eager_ops_and_says_so_once(monkeypatch, tmp_path, capsys):
    from xlprompt.engine import int8_token, kernels

    monkeypatch.setenv("XLPROMPT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(kernels, "build_key", lambda: "no-compiler-test")
    int8_token.fused_kernels.cache_clear()
    try:
        layer, x = TokenInt8Linear(nn.Linear(24, 12)), torch.randn(20, 24)
        with torch.inference_mode():
            first, second = layer(x), layer(x)
        assert int8_token.fused_kernels() is None
        err = capsys.readouterr().err
        assert err.count("could not build the int8 kernels") == 1 and "eager" in err
        with torch.inference_mode():
            torch.testing.assert_close(first, nn.functional.linear(x, layer.weight_t.t().float()
                                                                   * layer.weight_scale[:, None]) + layer.bias,
                                       rtol=0.05, atol=0.05)
        assert torch.equal(first, second)
    finally:
        int8_token.fused_kernels.cache_clear()


def test_int8_keeps_freed_memory_instead_of_faulting_it_in_again():
    """An int8 pass allocates a fresh 12 MB activation in every layer; after the int8 layers are swapped in,
    freeing and allocating one again must not page it in from the OS again each time (glibc only)."""
    import resource

    from xlprompt.engine.int8_token import keep_freed_memory

    with token_int8_linears(nn.Sequential(nn.Linear(4, 4))):
        pass
    if not keep_freed_memory():
        pytest.skip("not glibc, or XLPROMPT_KEEP_FREED_MEMORY=0")
    torch.ones(3 << 20)  # 12 MB: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(3 << 20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults <= 2 * 3072, f"{faults} page faults for 20 allocations of 12 MB (glibc default here: ~28,000)"
