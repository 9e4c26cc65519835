"""Heads turn hidden states into class logits. A head sees hidden states and positions, never the prompt."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import XlpromptError


def head_loss(outputs: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for every head: (B, K)/(B,) classes, (B, N, K)/(B, N) tags, (B, 2, N)/(B, 2) spans;
    targets of -100 are ignored."""
    return F.cross_entropy(outputs.flatten(0, -2), labels.flatten(), ignore_index=-100, reduction=reduction)


def verbalizer_token_ids(tokenizer, words: list[str]) -> list[int]:
    """First token of each label word as it appears after a space; errors if two words share it."""
    ids = []
    for word in words:
        pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not pieces:
            raise XlpromptError(f"Label word {word!r} tokenizes to nothing: choose another word.")
        # sentencepiece may emit a bare "▁" before the word: the word's own first piece is the label token
        while len(pieces) > 1 and not tokenizer.decode(pieces[:1]).strip():
            pieces = pieces[1:]
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        clash = [w for w, i in zip(words, ids) if ids.count(i) > 1]
        raise XlpromptError(f"Label words {clash} start with the same token: choose words that differ "
                            "in their first token (--label-words).")
    return ids


class VerbalizerHead(nn.Module):
    """Decoder head: the LM head at the label position only, never at every position.

    Returns batch x K scores whose first C columns are the label words' logits (prediction = argmax over
    them). With `loss_over="vocabulary"` (Philippy et al.'s loss: cross-entropy over the whole vocabulary
    at that one position) a last column holds the log-sum-exp of every other token, so plain
    cross-entropy over the K = C + 1 columns equals the full-vocabulary loss exactly. With
    `loss_over="labels"` only the C verbalizer rows of the LM head are computed (K = C). One vocabulary
    row per example costs under 1 % of the forward pass, so evaluation uses the same path as training.
    """

    def __init__(self, backbone, token_ids: list[int], loss_over: str = "vocabulary"):
        super().__init__()
        if loss_over not in ("vocabulary", "labels"):
            raise XlpromptError(f"Unknown loss_over {loss_over!r}: use 'vocabulary' or 'labels'.")
        self.backbone = [backbone]  # a list so the backbone's weights are not registered twice
        self.loss_over = loss_over
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)

    def forward(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        h = hidden[rows, batch.label_positions]
        if self.loss_over == "labels":
            weight, bias = self.backbone[0].output_rows(self.token_ids)
            logits = h @ weight.float().T  # a handful of rows: fp32 even under a bf16/fp16 backbone
            return logits + bias.float() if bias is not None else logits
        lm_head = self.backbone[0].model.get_output_embeddings()
        # batch x vocabulary at one position, in the LM head's own dtype (no fp32 copy of the vocabulary)
        full = lm_head(h.to(lm_head.weight.dtype)).float()
        labels = full[:, self.token_ids]
        others = full.index_fill(1, self.token_ids, float("-inf")).logsumexp(-1, keepdim=True)
        return torch.cat([labels, others], dim=-1)


class PooledLinearHead(nn.Module):
    """A linear layer over a pooled vector: the mean of real positions (e5's pooling), the first token
    (encoders), or the label position (a linear probe on a decoder's last text token)."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "first", "label"):
            raise XlpromptError(f"Unknown pooling {pooling!r}: use 'mean', 'first' or 'label'.")
        self.pooling = pooling
        self.linear = nn.Linear(hidden_size, num_labels)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
             label_positions: torch.Tensor) -> torch.Tensor:
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "label":
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), label_positions]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        return self.linear(self.pool(hidden, batch.attention_mask, batch.label_positions))


def gather_tokens(hidden: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
    """Hidden states of the original tokens, wherever the layout put them: (B, N, d)."""
    index = token_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


class TokenLinearHead(nn.Module):
    """Per-token classification (POS, NER) in original token order: prompts never shift a tag."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        return self.linear(gather_tokens(hidden, batch.token_positions))  # (B, N, labels)


class SpanHead(nn.Module):
    """Extractive QA: start and end scores over original tokens, shaped (B, 2, N) so that cross-entropy
    against (B, 2) start/end targets is the same call as for every other head."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor, batch) -> torch.Tensor:
        scores = self.linear(gather_tokens(hidden, batch.token_positions)).transpose(1, 2)
        return scores.masked_fill(~batch.token_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
