"""Prompt methods: one config and one module each. `build_prompt_method` picks the module by config type;
modules register their builder in PROMPT_BUILDERS, so adding a method touches no other file's logic."""
from __future__ import annotations

import torch

from .config import (DeepPromptConfig, FinetuneConfig, HeadOnlyConfig, InputPromptConfig, method_config,
                     method_from_dict)
from .input_prompt import InputPrompt, PromptedInputs, build_input_prompt

PROMPT_BUILDERS = {InputPromptConfig: build_input_prompt}

from .deep_prompt import DeepPrompt, build_deep_prompt

PROMPT_BUILDERS[DeepPromptConfig] = build_deep_prompt


def build_prompt_method(config, backbone, generator: torch.Generator):
    """The prompt module for a method config, or None for methods without a prompt."""
    if config.enters is None:
        return None
    builder = PROMPT_BUILDERS.get(type(config))
    if builder is None:
        raise TypeError(f"No prompt module registered for {type(config).__name__}")
    return builder(config, backbone, generator)


__all__ = ["InputPromptConfig", "DeepPromptConfig", "FinetuneConfig", "HeadOnlyConfig", "InputPrompt",
           "PromptedInputs", "build_prompt_method", "method_from_dict", "method_config", "PROMPT_BUILDERS"]
