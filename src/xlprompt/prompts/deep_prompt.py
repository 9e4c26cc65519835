"""Deep prompt (P-tuning v2; Tu et al. 2022): L trainable keys and values prepended in every attention layer.

The prefix lives beside the text, not in it: it reserves no input slots, so label positions never move, and
the backbone returns hidden states for the text only. The model reads it as a prefilled key/value cache
plus L ones in front of the attention mask; the backbone turns the tensors into its cache object.

Run folders keep the final prefix only. With the optional projection (Tu et al.'s prefix reparameterization)
`state_dict()` writes the projected prefix under the same key `prefix`, and loading that state into a
module built with projection folds the projection away (`materialize`), so a reloaded run gives the same
logits without the projection net and inference never needs it.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core import io
from ..core.errors import XlpromptError
from ..runs.state import FILES
from .config import DeepPromptConfig
from .input_prompt import PromptedInputs

PROMPT_FILE = FILES["prompt"]


def kv_geometry(model_config, num_heads: int, hidden_size: int) -> tuple[int, int]:
    """(key/value heads, head dim) of an attention layer.

    Grouped-query (Llama-style) and multi-query models keep fewer K/V heads than query heads, and a prefix
    must have the cache's shape, not the queries'.
    """
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_kv_heads", None) or num_heads
    if getattr(cfg, "multi_query", False):
        kv_heads = 1
    head_dim = getattr(cfg, "head_dim", None) or hidden_size // num_heads
    return kv_heads, head_dim


class DeepPrompt(nn.Module):
    """Prefix keys/values for every layer, shape (layers, 2, kv_heads, L, head_dim), [K, V] per layer.

    Without projection the prefix is the parameter `prefix`. With projection the parameters are an L x d
    `embedding` and the MLP `projection`; `prefix_tensor()` computes the prefix from them (the layout of
    the MLP output is PEFT's: L x (layers * 2) x heads x head_dim).
    """

    def __init__(self, config: DeepPromptConfig, hidden_size: int, num_layers: int, kv_heads: int,
                 head_dim: int, make_cache):
        super().__init__()
        self.config = config
        self.shape = (num_layers, 2, kv_heads, config.prompt_length, head_dim)
        # the backbone owns transformers' cache classes; we only hand it per-layer (K, V) tensors
        self._make_cache = make_cache
        if config.prefix_projection:
            out = num_layers * 2 * kv_heads * head_dim  # 2 * layers * d without GQA, as in Tu et al.
            self.register_parameter("prefix", None)
            self.embedding = nn.Parameter(torch.empty(config.prompt_length, hidden_size))
            # skip_init: the builder draws every value from its generator, and the global RNG stays untouched
            hidden = config.projection_hidden
            self.projection = nn.Sequential(nn.utils.skip_init(nn.Linear, hidden_size, hidden), nn.Tanh(),
                                            nn.utils.skip_init(nn.Linear, hidden, out))
        else:
            self.prefix = nn.Parameter(torch.empty(self.shape))
            self.register_parameter("embedding", None)
            self.register_module("projection", None)
        self.register_state_dict_post_hook(_save_final_prefix)
        self.register_load_state_dict_pre_hook(_load_final_prefix)

    @property
    def num_slots(self) -> int:
        return 0  # nothing goes into the input sequence

    @property
    def materialized(self) -> bool:
        """True when the prefix is a plain parameter (no projection, or the projection folded away)."""
        return self.projection is None

    def prefix_tensor(self) -> torch.Tensor:
        if self.projection is None:
            return self.prefix
        layers, two, kv_heads, length, head_dim = self.shape
        flat = self.projection(self.embedding)  # (L, layers * 2 * kv_heads * head_dim)
        return flat.view(length, layers, two, kv_heads, head_dim).permute(1, 2, 3, 0, 4)

    @torch.no_grad()
    def materialize(self) -> "DeepPrompt":
        """Replace embedding + projection by the prefix they compute now (same logits, fewer parameters)."""
        if self.projection is not None:
            with torch.inference_mode(False):  # a Parameter must not be an inference tensor
                final = self.prefix_tensor().detach().clone().contiguous()
            self.prefix = nn.Parameter(final)
            self.embedding = None
            self.projection = None
        return self

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                prompt_mask: torch.Tensor | None = None) -> PromptedInputs:
        batch, length = embeds.shape[0], self.config.prompt_length
        prefix = self.prefix_tensor().to(embeds.dtype)
        # expand is a view: the batch shares one prefix and its gradient sums over the batch
        layers = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix]
        # the prefix is visible to every text token, padded or not, so the mask gets L leading ones
        mask = torch.cat([attention_mask.new_ones(batch, length), attention_mask], dim=1)
        return PromptedInputs(embeds, mask, self._make_cache(layers))

    def load_run(self, run_dir: str | Path) -> None:
        """Start from the prefix a saved run trained (`init=run:DIR`)."""
        path = Path(run_dir).expanduser() / PROMPT_FILE
        if not path.exists():
            raise XlpromptError(f"init run:{run_dir}: {path} does not exist; point it at a run folder "
                                "trained with --method deep.")
        state = io.load_tensors(path)
        if "prefix" not in state:
            raise XlpromptError(f"init run:{run_dir}: its prompt holds {sorted(state)}, not a deep prompt "
                                "prefix; it was trained with another method.")
        if tuple(state["prefix"].shape) != self.shape:
            raise XlpromptError(f"init run:{run_dir}: its prefix has shape {tuple(state['prefix'].shape)} "
                                f"(layers, K/V, heads, length, head dim), this model and length need {self.shape}.")
        if self.projection is not None:
            # a run folder holds no projection net (it cannot be recovered from the prefix)
            warnings.warn(f"init run:{run_dir}: the saved prefix trains directly; projection is not used.",
                          stacklevel=2)
        self.load_state_dict({"prefix": state["prefix"]})


def _save_final_prefix(module: DeepPrompt, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: store the projected prefix as `prefix`, never the projection net."""
    if module.projection is None:
        return
    for key in [k for k in state_dict if k == prefix + "embedding" or k.startswith(prefix + "projection.")]:
        del state_dict[key]
    state_dict[prefix + "prefix"] = module.prefix_tensor().detach()


def _load_final_prefix(module: DeepPrompt, state_dict, prefix: str, *args) -> None:
    """load pre-hook: a saved state holds the final prefix, so a module built with projection folds it away
    first; the ordinary loading then copies the saved prefix into the new parameter."""
    if prefix + "prefix" in state_dict and module.projection is not None:
        module.materialize()


def build_deep_prompt(config: DeepPromptConfig, backbone, generator: torch.Generator) -> DeepPrompt:
    kv_heads, head_dim = kv_geometry(backbone.model.config, backbone.num_heads, backbone.hidden_size)
    module = DeepPrompt(config, backbone.hidden_size, backbone.num_layers, kv_heads, head_dim,
                        backbone.prefix_cache)
    r = config.init_range
    with torch.no_grad():  # every draw from `generator`, so a seed fixes the whole module
        if module.projection is None:
            module.prefix.uniform_(-r, r, generator=generator)
        else:
            module.embedding.uniform_(-r, r, generator=generator)
            for layer in (module.projection[0], module.projection[2]):
                bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's default range
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    if config.init.startswith("run:"):
        module.load_run(config.init[len("run:"):])
    return module
