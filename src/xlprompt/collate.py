"""Tokenize once, lay out prompt slots and label positions, pad into batches.

Layouts (PRODUCT.md): decoders read `[bos] text P1..PL </s>` and the label is predicted at the last
position before `</s>`; encoders read `<s> P1..PL text </s>` (or `<s> P text </s></s> pair </s>`).
Slots are reserved here, so a prompt method only fills them and no label position ever shifts later.
`prompt_position="start"` puts the slots before every token instead (PEFT prompt tuning's layout); the
decoder label is then read at the last text token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    prompt_mask: torch.Tensor     # (B, T) True at prompt slots
    label_positions: torch.Tensor  # (B,) where a verbalizer head reads the hidden state
    labels: torch.Tensor          # (B,)
    index: torch.Tensor           # (B,) row numbers in the encoded dataset

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class Encoded:
    """Token ids of a dataset, computed once, independent of any prompt."""

    def __init__(self, token_ids: list[list[int]], labels: list[int]):
        self.token_ids = token_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.token_ids)

    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]


def encode_texts(tokenizer, texts: list[str], labels: list[int], max_length: int,
                 text_pairs: list[str] | None = None) -> Encoded:
    """Tokenize with the model's own special tokens, truncated to `max_length` before prompt slots."""
    kwargs = dict(truncation=True, max_length=max_length)
    if text_pairs is None:
        enc = tokenizer(list(texts), **kwargs)
    else:
        enc = tokenizer(list(texts), list(text_pairs), **kwargs)
    return Encoded(enc["input_ids"], [int(x) for x in labels])


class Collator:
    """Builds padded batches for one model kind and one number of prompt slots."""

    def __init__(self, kind: str, num_slots: int, pad_id: int, eos_id: int | None, slot_id: int | None = None,
                 prompt_position: str = "auto"):
        self.kind = kind
        self.prompt_position = prompt_position
        self.num_slots = num_slots
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.slot_id = pad_id if slot_id is None else slot_id

    def layout(self, ids: list[int]) -> tuple[list[int], list[bool], int]:
        """Return token ids with slots, the slot mask and the label position for one example."""
        slots = [self.slot_id] * self.num_slots
        if self.prompt_position == "start":  # PEFT's layout: the prompt before every token
            body = list(ids)
            if self.kind == "decoder" and self.eos_id is not None and len(body) > 1 and body[-1] == self.eos_id:
                body = body[:-1]
            out = slots + body
            label_pos = len(out) - 1 if self.kind == "decoder" else 0
            if self.kind == "decoder" and self.eos_id is not None:
                out = out + [self.eos_id]
            mask = [True] * self.num_slots + [False] * (len(out) - self.num_slots)
            return out, mask, label_pos
        if self.kind == "decoder":
            body = list(ids)
            if body and self.eos_id is not None and body[-1] == self.eos_id and len(body) > 1:
                body = body[:-1]  # GPT-2-style tokenizers may already end with eos: one </s> only
            out = body + slots
            label_pos = len(out) - 1
            if self.eos_id is not None:
                out = out + [self.eos_id]
            mask = [False] * len(body) + [True] * self.num_slots + [False] * (len(out) - len(body) - self.num_slots)
            return out, mask, label_pos
        out = ids[:1] + slots + ids[1:]
        mask = [False] + [True] * self.num_slots + [False] * (len(ids) - 1)
        return out, mask, 0

    def __call__(self, encoded: Encoded, rows: list[int]) -> Batch:
        laid = [self.layout(encoded.token_ids[i]) for i in rows]
        width = max(len(ids) for ids, _, _ in laid)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        prompt_mask = torch.zeros((n, width), dtype=torch.bool)
        positions = torch.zeros(n, dtype=torch.long)
        for r, (ids, mask, pos) in enumerate(laid):
            input_ids[r, :len(ids)] = torch.tensor(ids)
            attention[r, :len(ids)] = 1
            prompt_mask[r, :len(ids)] = torch.tensor(mask)
            positions[r] = pos
        labels = torch.tensor([encoded.labels[i] for i in rows], dtype=torch.long)
        return Batch(input_ids, attention, prompt_mask, positions, labels, torch.tensor(rows))


def length_sorted_batches(lengths: list[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
    """Rows grouped by length (longest first) so padding is small; each batch within a token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, lengths[i])
        too_many = len(current) >= max_rows
        too_big = max_tokens is not None and current and new_width * (len(current) + 1) > max_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches
