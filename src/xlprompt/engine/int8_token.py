"""int8 matmuls with one activation scale per token (row), on PyTorch's integer kernel (`torch._int_mm`).

Dynamic int8 quantization (torch.ao, or ONNX Runtime's) gives the whole batch's activation tensor one
scale: one token with large values coarsens every other token in the batch, and which tokens share a
batch changes the result. Here each row of the activation gets its own scale (max |x| / 127, symmetric),
each weight row (output channel) its own too, and the int32 product is rescaled by both:

    y = int_mm(round(x / s_x), W_q^T) * s_x * s_w + b

so a token's result depends only on that token. The weights are quantized once when the layer is made.

The quantize and rescale steps run in a compiled extension where one can be built (engine/kernels.py: one
pass over memory each instead of several); it is checked against the eager ops below once per process and
used only if it gives the same bits.

While int8 layers are in place, glibc's allocator is told to keep freed memory (`keep_freed_memory`): an int8
pass allocates a fresh 12 MB activation in every layer, and by default glibc maps each one from the OS and
unmaps it when freed, so every layer paid page faults on it again. Keeping the memory made the int8 pass over
205 languages 1.04x faster (1.17x on one batch shape; fp32 and training: no change; benchmarks/README.md).
It is process-wide and stays on; `XLPROMPT_KEEP_FREED_MEMORY=0` turns it off.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import types

import torch
from torch import nn

MIN_ROWS = 17  # torch._int_mm wants more than 16 rows: smaller inputs are padded with zero rows


@functools.lru_cache(maxsize=None)
def int8_matmul_available() -> bool:
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        torch._int_mm(torch.ones(MIN_ROWS, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (RuntimeError, NotImplementedError):  # this build has no CPU kernel for it: int8 uses torch.ao
        return False
    return True


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager ops: (int8 rows, (n, 1) scales), one symmetric scale max |x| / 127 per row."""
    x_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return (rows / x_scale).round_().to(torch.int8), x_scale


def rescale(acc: torch.Tensor, x_scale, weight_scale, bias, n: int) -> torch.Tensor:
    """Eager ops: the first n rows of the int32 product as floats, acc * (s_x s_w) + b."""
    y = acc[:n].float()
    y.mul_(x_scale[:n] * weight_scale)  # in place: the same numbers as y * (s_x s_w), fewer copies
    if bias is not None:
        y.add_(bias)
    return y


EAGER = types.SimpleNamespace(quantize_rows=quantize_rows, rescale=rescale)


@functools.lru_cache(maxsize=None)
def fused_kernels():
    """The compiled quantize/rescale (engine/kernels.py) if it builds here and agrees bit for bit with the
    eager ops on a check that covers vector blocks, a tail, padding rows and no bias; else None."""
    from .base import notice
    from .kernels import build

    module = build()
    if module is None:
        return None
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(MIN_ROWS + 3, 53, generator=generator) * torch.rand(MIN_ROWS + 3, 1, generator=generator) * 8
    rows[1] = 0.0
    weight_t = torch.randint(-127, 128, (53, 35), dtype=torch.int8, generator=generator)
    weight_scale, bias = torch.rand(35, generator=generator), torch.randn(35, generator=generator)
    q, s = quantize_rows(rows)
    acc = torch._int_mm(q, weight_t)
    fq, fs = module.quantize_rows(rows)
    same = torch.equal(q, fq) and torch.equal(s, fs) and all(
        torch.equal(rescale(acc, s, weight_scale, b, n), module.rescale(acc, fs, weight_scale, b, n))
        for b in (bias, None) for n in (MIN_ROWS + 3, MIN_ROWS - 4))
    if not same:
        notice("the compiled int8 kernels disagree with PyTorch's ops on this machine: using the eager ops")
        return None
    return module


class TokenInt8Linear(nn.Module):
    """An int8 copy of an `nn.Linear` (weights per output channel, activations per token)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_t", torch.round(weight / scale[:, None]).clamp(-127, 127)
                             .to(torch.int8).t().contiguous())  # (in, out), what _int_mm takes
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        n = rows.shape[0]
        if n < MIN_ROWS:
            rows = torch.cat([rows, rows.new_zeros(MIN_ROWS - n, rows.shape[1])])
        ops = fused_kernels() or EAGER
        quantized, x_scale = ops.quantize_rows(rows)
        y = ops.rescale(torch._int_mm(quantized, self.weight_t), x_scale, self.weight_scale, self.bias, n)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def linear_swaps(module: nn.Module, keep=None) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, attribute, fp32 layer, int8 layer) for every `nn.Linear` under `module`, except those whose
    dotted name `keep(name)` says to leave in fp32."""
    swaps = []
    for prefix, parent in list(module.named_modules()):
        for attr, leaf in list(parent.named_children()):
            name = f"{prefix}.{attr}" if prefix else attr
            if type(leaf) is nn.Linear and not (keep and keep(name)):
                swaps.append((parent, attr, leaf, TokenInt8Linear(leaf)))
    return swaps


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """glibc only (elsewhere nothing is done): allocations up to 32 MiB come from the heap instead of their own
    mappings, and the heap keeps up to 1 GiB of freed memory instead of returning it to the OS."""
    if os.environ.get("XLPROMPT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20)))


@contextlib.contextmanager
def swapped(swaps):
    """Within the block the int8 layers are in place; the fp32 ones are back afterwards."""
    keep_freed_memory()
    try:
        for parent, attr, _, int8 in swaps:
            setattr(parent, attr, int8)
        yield len(swaps)
    finally:
        for parent, attr, fp32, _ in swaps:
            setattr(parent, attr, fp32)


def token_int8_linears(module: nn.Module):
    return swapped(linear_swaps(module))
