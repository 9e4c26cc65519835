"""The PyTorch engine: the frozen backbone's forward in fp32, under autocast (bf16/fp16), or with its
`nn.Linear` layers swapped for int8 copies for the block.

int8: `int8_token.py`'s layers (one activation scale per token, `torch._int_mm`) where torch has a CPU int8
matmul, else `torch.ao`'s dynamic ones (one activation scale per tensor, which lost 3.6 points over
SIB-200's 205 languages; per token lost 0.06 on an 8-language sample but 2.94 on one language of the
guard, benchmarks/README.md). The prompt, the head and a trained backbone are never quantized. bf16
weights (a frozen backbone cast to bf16) need no engine state: precision fp32 runs them as they are.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from .base import Engine


class TorchEngine(Engine):
    name = "torch"
    precisions = ("fp32", "int8", "int8-checked", "bf16", "fp16")  # int8-checked: checked.py, on this engine

    @property
    def reads_features(self) -> bool:
        return self.precision == "fp32"

    def prepared(self, model):
        return precision_context(self.precision, model, next(model.parameters()).device)


def quantization_available() -> bool:
    from .int8_token import int8_matmul_available

    if int8_matmul_available():
        return True
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return True


def _quantize_linear(linear: nn.Linear) -> nn.Module:
    """An int8 copy with one weight scale per output channel: on 8 SIB-200 languages this lost half as
    much accuracy as one scale per tensor (-1.5 vs -3.2 points) at the same speed."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao, but still works in 2.13
        warnings.simplefilter("ignore")
        wrapped = nn.Sequential(linear)  # quantize_dynamic copies what it is given: only this layer
        return quantize_dynamic(wrapped, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]


@contextlib.contextmanager
def quantized_linears(module: nn.Module):
    """Within the block, every `nn.Linear` under `module` is an int8 dynamic-quantized copy; the
    originals (and their fp32 weights) are put back on exit, so training or fp32 evaluation after it is unchanged."""
    swapped = []
    for name, child in list(module.named_modules()):
        for attr, leaf in list(child.named_children()):
            if type(leaf) is nn.Linear:
                swapped.append((child, attr, leaf))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for parent, attr, leaf in swapped:
                setattr(parent, attr, _quantize_linear(leaf))
        yield len(swapped)
    finally:
        for parent, attr, leaf in swapped:
            setattr(parent, attr, leaf)


@contextlib.contextmanager
def precision_context(precision: str, model, device: torch.device):
    """Apply a resolved precision to `model` for the duration of the block."""
    if precision == "int8":
        from .int8_token import int8_matmul_available, token_int8_linears

        swap = token_int8_linears if int8_matmul_available() else quantized_linears
        with swap(model.backbone.body):
            yield
    elif precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
    else:
        yield
