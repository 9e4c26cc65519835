"""int8 matmuls with one activation scale per token (row), on PyTorch's integer kernel (`torch._int_mm`).

Dynamic int8 quantization (torch.ao, or ONNX Runtime's) gives the whole batch's activation tensor one
scale: one token with large values coarsens every other token in the batch, and which tokens share a
batch changes the result. Here each row of the activation gets its own scale (max |x| / 127, symmetric),
each weight row (output channel) its own too, and the int32 product is rescaled by both:

    y = int_mm(round(x / s_x), W_q^T) * s_x * s_w + b

so a token's result depends only on that token. The weights are quantized once when the layer is made.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

MIN_ROWS = 17  # torch._int_mm wants more than 16 rows: smaller inputs are padded with zero rows


@functools.lru_cache(maxsize=None)
def int8_matmul_available() -> bool:
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        torch._int_mm(torch.ones(MIN_ROWS, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (RuntimeError, NotImplementedError):
        return False
    return True


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
        x_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        quantized = (rows / x_scale).round_().to(torch.int8)
        y = torch._int_mm(quantized, self.weight_t)[:n].float()
        y.mul_(x_scale[:n] * self.weight_scale)  # in place: the same numbers as y * (s_x s_w), fewer copies
        if self.bias is not None:
            y.add_(self.bias)
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


@contextlib.contextmanager
def swapped(swaps):
    """Within the block the int8 layers are in place; the fp32 ones are back afterwards."""
    try:
        for parent, attr, _, int8 in swaps:
            setattr(parent, attr, int8)
        yield len(swaps)
    finally:
        for parent, attr, fp32, _ in swaps:
            setattr(parent, attr, fp32)


def token_int8_linears(module: nn.Module):
    return swapped(linear_swaps(module))
