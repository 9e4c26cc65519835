"""Prompt methods: one config and one module each, built by `build_prompt_method`."""
from __future__ import annotations

import torch

from .config import InputPromptConfig, method_from_dict
from .input_prompt import InputPrompt, PromptedInputs


def build_prompt_method(config, backbone, generator: torch.Generator):
    """The module for a method config (None for methods without a prompt)."""
    if isinstance(config, InputPromptConfig):
        module = InputPrompt(config, backbone.hidden_size)
        with torch.no_grad():
            module.embedding.uniform_(-config.init_range, config.init_range, generator=generator)
        if config.init == "vocab":
            module.init_from_vocab(backbone.input_embeddings, generator)
        return module
    raise TypeError(f"No prompt module for {type(config).__name__}")


__all__ = ["InputPromptConfig", "InputPrompt", "PromptedInputs", "build_prompt_method", "method_from_dict"]
