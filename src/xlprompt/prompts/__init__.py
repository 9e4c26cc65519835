"""Prompt methods: one config and one module each, registered in one place.

A method is its config class (prompts/config.py: what it trains, how it enters the model, its options as
declared settings) and, when it has a prompt, the module its builder makes. `register_method(Config,
builder)` makes both known; the CLI, grid, store, report, serving, engines and interop then read the
config's description and never test its name or class.

The module contract, for `enters="input"`: `forward(embeds, attention_mask, prompt_mask) -> PromptedInputs`
writing its vectors into the `num_slots` slots the collator reserved, and `prompt_embeddings()` (L, d), the
vectors the mixed-prompt server writes itself; for `enters="prefix"`: `num_slots = 0`, a forward that
returns per-layer keys/values in `PromptedInputs.past_key_values`, and `prefix_tensor()` (layers, 2,
kv_heads, L, head_dim). Both: `materialize()` folds any reparameterization into the stored tensor and
`materialized` says whether it has, so run folders hold the final prompt.
"""
from __future__ import annotations

import torch

from .config import (METHOD_CONFIGS, DeepPromptConfig, FinetuneConfig, HeadOnlyConfig, InputPromptConfig,
                     method_config, method_from_dict, register_config)
from .deep_prompt import DeepPrompt, build_deep_prompt
from .input_prompt import InputPrompt, PromptedInputs, build_input_prompt

PROMPT_BUILDERS = {}  # config class -> builder(config, backbone, generator) -> module


def register_method(config_cls, builder=None) -> type:
    """Register a method: its config class and, for methods with a prompt, its module's builder."""
    if (builder is None) != (config_cls.enters is None):
        raise TypeError(f"{config_cls.__name__}: a method that enters the model needs a builder, and only it")
    register_config(config_cls)
    if builder is not None:
        PROMPT_BUILDERS[config_cls] = builder
    return config_cls


register_method(InputPromptConfig, build_input_prompt)
register_method(DeepPromptConfig, build_deep_prompt)
register_method(FinetuneConfig)
register_method(HeadOnlyConfig)


def build_prompt_method(config, backbone, generator: torch.Generator):
    """The prompt module for a method config, or None for methods without a prompt."""
    if config.enters is None:
        return None
    builder = PROMPT_BUILDERS.get(type(config))
    if builder is None:
        raise TypeError(f"No prompt module registered for {type(config).__name__}")
    return builder(config, backbone, generator)


__all__ = ["InputPromptConfig", "DeepPromptConfig", "FinetuneConfig", "HeadOnlyConfig", "InputPrompt",
           "DeepPrompt", "PromptedInputs", "build_prompt_method", "method_from_dict", "method_config",
           "register_method", "METHOD_CONFIGS", "PROMPT_BUILDERS"]
