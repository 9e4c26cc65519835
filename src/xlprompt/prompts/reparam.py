"""Reparameterization of soft prompts: a small network between the trained tensor and the prompt.

The network only shapes optimisation; after training `InputPrompt.materialize()` runs it once and keeps
its output, so run folders and exports hold the final prompt and no network.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import XlpromptError


def _linear(d_in: int, d_out: int, generator: torch.Generator | None) -> nn.Linear:
    """nn.Linear with PyTorch's default init, but drawn from `generator` when given: the prompt's own
    seeded stream, so adding a reparam net leaves the global RNG (and thus the head's init) untouched
    and runs with and without reparameterization stay paired at the same seed."""
    if generator is None:
        return nn.Linear(d_in, d_out)
    layer = nn.utils.skip_init(nn.Linear, d_in, d_out)  # no draw from the global RNG
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1 / math.sqrt(d_in)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class MLPReparam(nn.Module):
    """Linear(d,h)-ReLU-Linear(h,d)-LayerNorm(d), applied to each prompt vector (Philippy et al. 2024)."""

    def __init__(self, d: int, h: int, generator: torch.Generator | None = None):
        super().__init__()
        self.net = nn.Sequential(_linear(d, h, generator), nn.ReLU(), _linear(h, d, generator), nn.LayerNorm(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualReparam(nn.Module):
    """x + LayerNorm(Linear(d,h)-ReLU-Linear(h,d)(x)), i.e. x + MLPReparam(x).

    Why this form rather than LayerNorm(x + MLP(x)): it is Residual Prompt Tuning's (Razdaibiedina et al.
    2023), and the identity path is not normalised, so the prompt keeps the scale of its initialisation
    (XGLM's embeddings are scaled by sqrt(d); vocab/text/run inits stay in the space the model reads)
    while the normalised branch adds a bounded, learnable correction. It also reuses the MLP of the
    paper verbatim, so `mlp` and `residual` differ only by the skip connection.
    """

    def __init__(self, d: int, h: int, generator: torch.Generator | None = None):
        super().__init__()
        self.mlp = MLPReparam(d, h, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


REPARAM_CLASSES = {"mlp": MLPReparam, "residual": ResidualReparam}


def build_reparam(name: str, d: int, h: int | None = None,
                  generator: torch.Generator | None = None) -> nn.Module | None:
    """The reparam net for a config's `reparam` name (None for "none"); h defaults to d."""
    if name == "none":
        return None
    if name not in REPARAM_CLASSES:
        raise XlpromptError(f"Unknown reparameterization {name!r}: use none, {', '.join(REPARAM_CLASSES)}.")
    h = d if h is None else h
    if h < 1:
        raise XlpromptError(f"Reparameterization hidden size must be >= 1, got {h}: set reparam_hidden "
                            "to a positive number, or to None for the model's hidden size.")
    return REPARAM_CLASSES[name](d, h, generator)
