"""Input-level soft prompt (Lester et al. 2021; Philippy et al. 2024)."""
from __future__ import annotations

import torch
from torch import nn

from .config import InputPromptConfig
from .init import initial_prompt
from .reparam import build_reparam


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
    downstream shifts indices. With a reparam net, `embedding` is the net's input and the prompt is
    `reparam(embedding)`; `materialize()` stores that output in `embedding` and drops the net, after which
    the state_dict is just the final prompt. A module built with a net also accepts such a materialised
    state (see `_load_from_state_dict`), so run folders never need the network.
    """

    def __init__(self, config: InputPromptConfig, embed_dim: int, initial: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        if initial is None:
            initial = torch.empty(config.prompt_length, embed_dim).uniform_(-config.init_range, config.init_range,
                                                                     generator=generator)
        if tuple(initial.shape) != (config.prompt_length, embed_dim):
            raise ValueError(f"initial prompt has shape {tuple(initial.shape)}, expected "
                             f"{(config.prompt_length, embed_dim)}")
        self.embedding = nn.Parameter(initial.detach().clone().float())
        self.reparam = build_reparam(config.reparam, embed_dim, config.reparam_hidden, generator)

    @property
    def num_slots(self) -> int:
        return self.config.prompt_length

    @property
    def materialized(self) -> bool:
        """True once a configured reparam net has been folded into `embedding`."""
        return self.reparam is None and self.config.reparam != "none"

    def prompt_embeddings(self) -> torch.Tensor:
        """The (L, d) prompt the model reads."""
        return self.embedding if self.reparam is None else self.reparam(self.embedding)

    @torch.no_grad()
    def materialize(self) -> "InputPrompt":
        """Replace `embedding` by the reparameterised prompt and drop the net; logits stay bit-identical
        because the stored tensor is exactly what `prompt_embeddings()` returned. Idempotent."""
        if self.reparam is not None:
            final = self.prompt_embeddings().detach().clone()
            self.embedding = nn.Parameter(final, requires_grad=self.embedding.requires_grad)
            self.reparam = None
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state with our `embedding` but no `reparam.*` keys is a materialised prompt (what run folders
        # store): drop the net before loading, so the loader neither expects its weights nor applies it.
        # Runs before children are visited, so the dropped net is not reported as missing keys.
        if (self.reparam is not None and prefix + "embedding" in state_dict
                and not any(k.startswith(prefix + "reparam.") for k in state_dict)):
            self.reparam = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                prompt_mask: torch.Tensor) -> PromptedInputs:
        batch, length = embeds.shape[0], self.config.prompt_length
        prompt = self.prompt_embeddings().to(embeds.dtype)
        # the slots' positions, in order, without a boolean index: `embeds[prompt_mask]` needs the count of
        # True values on the host, a GPU->CPU sync in every forward pass (a stable sort puts slots first)
        slots = torch.sort((~prompt_mask).to(torch.uint8), dim=1, stable=True).indices[:, :length]
        rows = torch.arange(batch, device=embeds.device).unsqueeze(1)
        embeds = embeds.clone()
        embeds[rows, slots] = prompt.unsqueeze(0).expand(batch, -1, -1)
        return PromptedInputs(embeds, attention_mask)


def build_input_prompt(config: InputPromptConfig, backbone, generator: torch.Generator) -> InputPrompt:
    """Prompt initialised per `config.init` (init.py), then its reparam net, both from `generator`: the
    raw prompt is the same with and without reparameterization at a given seed."""
    initial = initial_prompt(config, backbone, generator)
    return InputPrompt(config, backbone.hidden_size, initial=initial, generator=generator)
