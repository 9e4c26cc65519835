"""Token classification (UD POS, PAN-X NER): one tag per word, read at the word's first sub-token.

Encoding. Words go through the model's own tokenizer as pre-split input
(`is_split_into_words=True`), and `word_ids()` says which word each sub-token came from. The word's tag
id is put on its first sub-token; every other position (special tokens, later sub-tokens) is -100. The
collator maps these original token positions through the prompt layout (`Batch.token_positions`) and
the per-token head reads hidden states in original order, so a prompt never shifts a tag.

Long sentences. Instead of truncating at `max_length` (which would lose the end of long sentences,
and more of it in languages the tokenizer splits finely, biasing zero-shot scores), a sentence whose
words do not all fit is cut into consecutive windows of whole words, each encoded as its own row
(XTREME splits long sentences the same way). `extra["sentence"]` names each row's sentence and
`extra["word_index"]` gives, per sub-token, the sentence-level index of the word it starts (-1 for
every other sub-token), which is all `score` needs to put predictions back on words. Only a word that
yields no sub-token at all (or a `max_length` too small for any word) gets no prediction; it is then
scored as wrong (POS) or as "O" (NER, so a gold entity there is a miss), never dropped: `n` is always
the number of gold words.

Metrics. POS: accuracy over words. NER: entity-level micro precision/recall/F1 from `seqeval` in its
default (conlleval-compatible) mode, as XTREME reports PAN-X, plus word-level tag accuracy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.collate import Encoded
from ..core.errors import XlpromptError


class TokenTagging:
    """The tagging format of a task with these tag names; `metric` is "accuracy" (POS) or "span_f1" (NER)."""

    head = "tagging"

    def __init__(self, label_names, metric: str = "accuracy"):
        if metric not in ("accuracy", "span_f1"):
            raise XlpromptError(f"Unknown tagging metric {metric!r}: use 'accuracy' or 'span_f1'.")
        self.label_names = tuple(label_names)
        self.label_ids = {name: i for i, name in enumerate(self.label_names)}
        self.metric = metric
        # f1 first: training reports and selects on metric_names[0]; accuracy is kept for NER too,
        # since it costs nothing and tables sort by it by default
        self.metric_names = ("accuracy",) if metric == "accuracy" else ("f1", "precision", "recall", "accuracy")

    def tag_ids(self, frame: pd.DataFrame) -> list[list[int]] | None:
        if "tags" not in frame:
            return None  # unlabelled rows: encode for prediction only, every target -100
        out = []
        for row, (words, tags) in enumerate(zip(frame["tokens"], frame["tags"])):
            if len(words) != len(tags):
                raise XlpromptError(f"Row {row}: {len(words)} tokens but {len(tags)} tags.")
            try:
                out.append([self.label_ids[t] for t in tags])
            except KeyError as exc:
                raise XlpromptError(f"Row {row}: unknown tag {exc.args[0]!r}; this task's tags are "
                                    f"{', '.join(self.label_names)}.") from None
        return out

    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int) -> Encoded:
        if not getattr(tokenizer, "is_fast", False):
            raise XlpromptError("Token classification needs a fast (Rust) tokenizer, which reports which "
                                "word each sub-token came from; this model's tokenizer is a slow one.")
        sentences = [[str(w) for w in words] for words in frame["tokens"]]
        tags = self.tag_ids(frame)
        rows = []  # (sentence, first word, token ids, targets, word_index)
        pending = [(s, 0) for s in range(len(sentences))]
        while pending:  # each pass encodes one window per sentence that still has words left
            enc = tokenizer([sentences[s][start:] for s, start in pending], is_split_into_words=True,
                            truncation=True, max_length=max_length)
            carry = []
            for k, (s, start) in enumerate(pending):
                ids, word_ids = enc["input_ids"][k], enc.word_ids(k)
                targets, starts, previous = [-100] * len(ids), [-1] * len(ids), None
                for t, w in enumerate(word_ids):
                    if w is not None and w != previous:  # first sub-token of word `start + w`
                        starts[t] = start + w
                        if tags is not None:
                            targets[t] = tags[s][start + w]
                    previous = w
                rows.append((s, start, list(ids), targets, starts))
                present = [w for w in word_ids if w is not None]
                # words after the last one that started in this window were cut off: next window
                if present and start + max(present) + 1 < len(sentences[s]):
                    carry.append((s, start + max(present) + 1))
            pending = carry
        rows.sort(key=lambda r: (r[0], r[1]))  # windows in sentence order, for readable debugging
        return Encoded([r[2] for r in rows], [r[3] for r in rows],
                       {"sentence": [r[0] for r in rows], "word_index": [r[4] for r in rows]})

    def predict_tags(self, frame: pd.DataFrame, encoded: Encoded, outputs) -> list[list[str | None]]:
        """Predicted tag names per word of every sentence; None where a word got no sub-token."""
        predicted: list[list[str | None]] = [[None] * len(words) for words in frame["tokens"]]
        k = len(self.label_names)
        for row, out in enumerate(outputs):
            starts = np.asarray(encoded.extra["word_index"][row])
            at = np.flatnonzero(starts >= 0)
            best = np.asarray(out)[at, :k].argmax(-1)
            sentence = predicted[encoded.extra["sentence"][row]]
            for t, label in zip(at, best):
                sentence[starts[t]] = self.label_names[label]
        return predicted

    def score(self, task, frame: pd.DataFrame, encoded: Encoded, outputs) -> dict:
        gold = [list(tags) for tags in frame["tags"]]
        predicted = self.predict_tags(frame, encoded, outputs)
        metrics = tagging_metrics(gold, predicted, span_f1=self.metric == "span_f1")
        return {name: metrics[name] for name in self.metric_names} | {"n": metrics["n"]}


def tagging_metrics(gold: list[list[str]], predicted: list[list[str | None]], span_f1: bool = True) -> dict:
    """Word accuracy (a missing prediction is wrong) and, with `span_f1`, seqeval's entity-level micro
    precision/recall/F1 (a missing prediction is "O"). `n` = number of gold words."""
    flat_gold = [t for sentence in gold for t in sentence]
    flat_pred = [t for sentence in predicted for t in sentence]
    if len(flat_gold) != len(flat_pred):
        raise XlpromptError(f"{len(flat_pred)} predicted tags for {len(flat_gold)} gold tags.")
    n = len(flat_gold)
    out = {"accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred)])) if n else float("nan"),
           "n": n}
    if span_f1:
        from seqeval.metrics import f1_score, precision_score, recall_score

        filled = [[t if t is not None else "O" for t in sentence] for sentence in predicted]
        if n:  # zero_division=0: a language without gold or predicted entities scores 0, not a warning
            for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
                out[name] = float(fn(gold, filled, zero_division=0))
        else:
            out.update(f1=float("nan"), precision=float("nan"), recall=float("nan"))
    return out
