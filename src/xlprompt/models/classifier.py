"""Backbone + prompt method + head, composed through their narrow contracts."""
from __future__ import annotations

import torch
from torch import nn

from ..collate import Batch, Collator
from ..errors import XlpromptError
from ..prompts import HeadOnlyConfig, build_prompt_method
from .backbone import Backbone
from .heads import PooledLinearHead, SpanHead, TokenLinearHead, VerbalizerHead, verbalizer_token_ids


class PromptedClassifier(nn.Module):
    def __init__(self, backbone: Backbone, method: nn.Module | None, head: nn.Module, num_labels: int):
        super().__init__()
        self.num_labels = num_labels  # heads may return extra columns for the loss; predictions use these
        self.backbone = backbone
        self.method = method
        self.head = head

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
        hidden = self.backbone(embeds, mask, past_key_values=past)  # text (+ slots) positions only
        return self.head(hidden, batch)

    def trainable_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """The small parts a run folder stores (the backbone is stored only when it was trained)."""
        out = {"head": {k: v for k, v in self.head.state_dict().items()}}
        if self.method is not None:
            out["prompt"] = {k: v for k, v in self.method.state_dict().items()}
        return out


def build_classifier(config, task, backbone: Backbone | None = None) -> PromptedClassifier:
    """Assemble the model a config describes; deterministic in `config.seed`."""
    backbone = backbone or Backbone.load(config.model)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    method = build_prompt_method(config.method, backbone, generator)
    head_kind = getattr(task.format, "head", "classification")
    if head_kind == "tagging":
        head = TokenLinearHead(backbone.hidden_size, task.num_labels)
    elif head_kind == "span":
        head = SpanHead(backbone.hidden_size)
    elif backbone.kind == "decoder" and (isinstance(config.method, HeadOnlyConfig) or not (
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
    return PromptedClassifier(backbone, method, head, task.num_labels)
