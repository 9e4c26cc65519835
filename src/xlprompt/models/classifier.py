"""Backbone + prompt method + head, composed through their narrow contracts."""
from __future__ import annotations

import torch
from torch import nn

from ..data.collate import Batch, Collator
from ..execution.device import autocast, configure, resolve_dtype
from ..core.errors import XlpromptError
from ..prompts import build_prompt_method
from .backbone import Backbone, layer_shape
from .heads import PooledLinearHead, SpanHead, TokenLinearHead, VerbalizerHead, verbalizer_token_ids


class PromptedClassifier(nn.Module):
    def __init__(self, backbone: Backbone, method: nn.Module | None, head: nn.Module, num_labels: int):
        super().__init__()
        self.num_labels = num_labels  # heads may return extra columns for the loss; predictions use these
        self.backbone = backbone
        self.method = method
        self.head = head
        # mixed precision of a backbone that trains: fp32 weights, forward under autocast in this dtype
        self.autocast_dtype: torch.dtype | None = None

    @property
    def num_slots(self) -> int:
        return getattr(self.method, "num_slots", 0) if self.method is not None else 0

    def collator(self) -> Collator:
        tok = self.backbone.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        position = getattr(getattr(self.method, "config", None), "position", "auto")
        return Collator(self.backbone.kind, self.num_slots, pad_id=pad, eos_id=tok.eos_token_id,
                        prompt_position=position)

    def forward(self, batch: Batch) -> torch.Tensor:
        embeds = self.backbone.embed(batch.input_ids)
        mask, past = batch.attention_mask, None
        if self.method is not None:
            prompted = self.method(embeds, batch.attention_mask, batch.prompt_mask)
            embeds, mask, past = prompted.embeds, prompted.attention_mask, prompted.past_key_values
        with autocast(embeds.device, self.autocast_dtype):
            hidden = self.backbone(embeds, mask, past_key_values=past)  # text (+ slots) positions only
        # heads keep fp32 weights: a bf16/fp16 backbone's hidden states are read in fp32 (no-op in fp32)
        return self.head(hidden.float(), batch)

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The small parts a run folder stores (the backbone is stored only when it was trained)."""
        out = {"head": {k: v for k, v in self.head.state_dict().items()}}
        if self.method is not None:
            out["prompt"] = {k: v for k, v in self.method.state_dict().items()}
        return out


def trains_backbone(config) -> bool:
    return not config.freeze_model or bool(getattr(config.method, "trains_backbone", False))


def plan_for_config(config, *, device=None, dtype=None, purpose: str = "evaluate", **settings):
    """The execution plan for a run of `config` (its backbone's layer shape read from the model's config
    file, without loading weights)."""
    from ..execution import resolve

    return resolve(device, dtype, purpose=purpose, trains_backbone=trains_backbone(config),
                   shape=layer_shape(config.model), **settings)


def build_classifier(config, task, backbone: Backbone | None = None, *, device=None, dtype=None,
                     gradient_checkpointing: bool = False, plan=None, purpose: str = "evaluate") -> PromptedClassifier:
    """Assemble the model a config describes; deterministic in `config.seed`.

    A backbone loaded here goes where the execution `plan` says (execution/plan.py; default: one resolved
    from `device`/`dtype` for `purpose`): a frozen one in the plan's dtype, one that trains in fp32 with
    autocast to it. A given `backbone` keeps its own device and dtype. The prompt and head are built on the
    CPU from the seed, then moved, in fp32, to the backbone's device.
    """
    if backbone is None:
        plan = plan or plan_for_config(config, device=device, dtype=dtype, purpose=purpose)
        where, precision = plan.device, plan.dtype
        weights = precision if not plan.trains_backbone else torch.float32  # fp32 master weights when it trains
        backbone = Backbone.load(config.model, dtype=weights, device=where)
    else:
        where = backbone.device
        precision = resolve_dtype(dtype, where) if dtype is not None else backbone.dtype
    configure(where)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    method = build_prompt_method(config.method, backbone, generator)
    if task.head == "tagging":
        head = TokenLinearHead(backbone.hidden_size, task.num_labels)
    elif task.head == "span":
        head = SpanHead(backbone.hidden_size)
    elif backbone.kind == "decoder" and (not config.method.uses_label_words or not (
            config.label_words or task.label_words)):
        # a linear probe on the decoder's hidden state at the label position: the head-only baseline,
        # and tasks without label words (pass --label-words to score words instead)
        head = PooledLinearHead(backbone.hidden_size, task.num_labels, "label")
    elif backbone.kind == "decoder":
        words = config.label_words or task.label_words.get(backbone.model.config.model_type) \
            or task.label_words.get("xglm")
        if len(words) != task.num_labels:
            raise XlpromptError(f"{len(words)} label words given for {task.num_labels} labels "
                                f"({', '.join(task.label_names)}).")
        head = VerbalizerHead(backbone, verbalizer_token_ids(backbone.tokenizer, list(words)), config.loss_over)
    else:
        head = PooledLinearHead(backbone.hidden_size, task.num_labels, config.pooling)
    model = PromptedClassifier(backbone, method, head, task.num_labels)
    if precision != backbone.dtype:
        model.autocast_dtype = precision
    if gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    return model.to(where)  # moves the prompt and head only: the backbone is there already
