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
    input_ids: torch.Tensor        # (B, T) laid out: text tokens plus prompt slots
    attention_mask: torch.Tensor   # (B, T)
    prompt_mask: torch.Tensor      # (B, T) True at prompt slots
    label_positions: torch.Tensor  # (B,) where a verbalizer head reads the hidden state
    token_positions: torch.Tensor  # (B, N) where each original token landed in the layout (0 where padded)
    token_mask: torch.Tensor       # (B, N) True for real original tokens
    labels: torch.Tensor           # (B,) classes | (B, N) tags | (B, 2) start/end token; -100 = ignore
    index: torch.Tensor            # (B,) row numbers in the encoded dataset

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class Encoded:
    """Token ids of a dataset and one target per row (an int, per-token ints, or a start/end pair),
    computed once, independent of any prompt. `extra` carries what a task needs to decode predictions
    (word ids, character offsets, example ids of QA windows...)."""

    def __init__(self, token_ids: list[list[int]], labels: list, extra: dict | None = None):
        self.token_ids = token_ids
        self.labels = labels
        self.extra = extra or {}

    def __len__(self) -> int:
        return len(self.token_ids)

    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]

    @staticmethod
    def concat(parts: list["Encoded"]) -> "Encoded":
        return Encoded([t for p in parts for t in p.token_ids], [y for p in parts for y in p.labels])


def encode_texts(tokenizer, texts: list[str], labels: list[int], max_length: int,
                 text_pairs: list[str] | None = None) -> Encoded:
    """Tokenize with the model's own special tokens, truncated to `max_length` before prompt slots."""
    kwargs = dict(truncation=True, max_length=max_length)
    if text_pairs is None:
        enc = tokenizer(list(texts), **kwargs)
    else:
        enc = tokenizer(list(texts), list(text_pairs), **kwargs)
    return Encoded(enc["input_ids"], [int(x) for x in labels])


def pad_targets(targets: list, ignore: int = -100) -> torch.Tensor:
    """Stack per-row targets, padding variable-length ones (token tags) with `ignore`."""
    rows = [torch.as_tensor(t, dtype=torch.long) for t in targets]
    if rows[0].dim() == 0:
        return torch.stack(rows)
    width = max(r.shape[0] for r in rows)
    out = torch.full((len(rows), width), ignore, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out


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

    def layout(self, ids: list[int]) -> tuple[list[int], list[bool], int, list[int]]:
        """Token ids with slots, the slot mask, the label position, and where each original token went."""
        slots = [self.slot_id] * self.num_slots
        n = len(ids)
        body = list(ids)
        # GPT-2-style tokenizers may already end with eos: a decoder reads one </s>, at the very end
        trailing_eos = self.kind == "decoder" and self.eos_id is not None and n > 1 and body[-1] == self.eos_id
        if trailing_eos:
            body = body[:-1]
        if self.prompt_position == "start":  # PEFT's layout: the prompt before every token
            before, after = slots, []
        elif self.kind == "decoder":
            before, after = [], slots
        else:  # encoders: after the first special token
            before, after = [], []
            body = body[:1] + slots + body[1:]
        out = before + body + after
        if self.kind == "encoder" and self.prompt_position != "start":
            positions = [0] + [i + self.num_slots for i in range(1, n)] if n else []
            mask = [False] + [True] * self.num_slots + [False] * (n - 1)
        else:
            positions = [len(before) + i for i in range(len(body))]
            mask = [True] * len(before) + [False] * len(body) + [True] * len(after)
        label_pos = len(out) - 1 if self.kind == "decoder" else 0
        if self.kind == "decoder" and self.eos_id is not None:
            out = out + [self.eos_id]
            mask = mask + [False]
        if trailing_eos:
            positions.append(len(out) - 1)
        return out, mask, label_pos, positions

    def __call__(self, encoded: Encoded, rows: list[int]) -> Batch:
        laid = [self.layout(encoded.token_ids[i]) for i in rows]
        input_ids, attention, prompt_mask, label_positions = pad_layouts(laid, self.pad_id)
        n, n_tokens = len(rows), max(len(pos) for _, _, _, pos in laid)
        token_positions = torch.zeros((n, n_tokens), dtype=torch.long)
        token_mask = torch.zeros((n, n_tokens), dtype=torch.bool)
        for r, (_, _, _, where) in enumerate(laid):
            token_positions[r, :len(where)] = torch.tensor(where, dtype=torch.long)
            token_mask[r, :len(where)] = True
        labels = pad_targets([encoded.labels[i] for i in rows])
        return Batch(input_ids, attention, prompt_mask, label_positions, token_positions, token_mask, labels,
                     torch.tensor(rows))


def pad_layouts(laid: list[tuple], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Rows laid out by `Collator.layout` (possibly by different collators) padded on the right into
    (input_ids, attention_mask, prompt_mask, label_positions)."""
    n, width = len(laid), max(len(ids) for ids, _, _, _ in laid)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    label_positions = torch.zeros(n, dtype=torch.long)
    for r, (ids, mask, pos, _) in enumerate(laid):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        attention[r, :len(ids)] = 1
        prompt_mask[r, :len(ids)] = torch.tensor(mask, dtype=torch.bool)
        label_positions[r] = pos
    return input_ids, attention, prompt_mask, label_positions


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
