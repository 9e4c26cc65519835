"""Input-level soft prompt (Lester et al. 2021; Philippy et al. 2024)."""
from __future__ import annotations

import torch
from torch import nn

from .config import InputPromptConfig


class PromptedInputs:
    """What a prompt method hands the backbone: embeddings, mask and optional prefix keys/values."""

    __slots__ = ("embeds", "attention_mask", "past_key_values")

    def __init__(self, embeds, attention_mask, past_key_values=None):
        self.embeds = embeds
        self.attention_mask = attention_mask
        self.past_key_values = past_key_values


class InputPrompt(nn.Module):
    """L vectors written into the input slots the collator reserved (`prompt_mask`).

    The collator lays the slots out, so label positions are known before the forward pass and nothing
    downstream shifts indices.
    """

    def __init__(self, config: InputPromptConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.embedding = nn.Parameter(torch.empty(config.length, embed_dim))
        nn.init.uniform_(self.embedding, -config.init_range, config.init_range)

    @property
    def num_slots(self) -> int:
        return self.config.length

    def init_from_vocab(self, input_embeddings: nn.Module, generator: torch.Generator) -> None:
        """Copy embeddings of random vocabulary tokens (through the model's own embedding module, so
        scaled embeddings like XGLM's stay in the space the model reads)."""
        vocab = input_embeddings.weight.shape[0]
        ids = torch.randint(0, vocab, (self.config.length,), generator=generator)
        with torch.no_grad():
            self.embedding.copy_(input_embeddings(ids))

    def prompt_embeddings(self) -> torch.Tensor:
        return self.embedding

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                prompt_mask: torch.Tensor) -> PromptedInputs:
        batch = embeds.shape[0]
        prompt = self.prompt_embeddings().to(embeds.dtype)
        embeds = embeds.clone()
        embeds[prompt_mask] = prompt.repeat(batch, 1)
        return PromptedInputs(embeds, attention_mask)


def build_input_prompt(config: InputPromptConfig, backbone, generator: torch.Generator) -> InputPrompt:
    module = InputPrompt(config, backbone.hidden_size)
    with torch.no_grad():
        module.embedding.uniform_(-config.init_range, config.init_range, generator=generator)
    if config.init == "vocab":
        module.init_from_vocab(backbone.input_embeddings, generator)
    return module
