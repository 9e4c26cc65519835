"""How a kind of task turns a frame into model inputs and model outputs into metrics.

A format is the task-kind half of a task (sentence classification, tagging, extractive QA); the data
half is the task's loader. Formats know tokenizers and arrays, not models or prompts: `encode` gives one
target per row (see collate.Encoded), the model gives one output array per row, `score` turns those into
the task's metrics.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.collate import Encoded, encode_texts


def classification_metrics(labels, predictions, num_labels: int) -> dict:
    from sklearn.metrics import f1_score

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {
        "accuracy": float((labels == predictions).mean()) if len(labels) else float("nan"),
        "macro_f1": float(f1_score(labels, predictions, labels=list(range(num_labels)),
                                   average="macro", zero_division=0)),
        "n": int(len(labels)),
    }


class SentenceClassification:
    """One label per text (or text pair, when the frame has a `text_pair` column)."""

    head = "classification"
    metric_names = ("accuracy", "macro_f1")

    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int) -> Encoded:
        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        return encode_texts(tokenizer, frame["text"].tolist(), frame["label"].tolist(), max_length, pairs)

    def score(self, task, frame: pd.DataFrame, encoded: Encoded, outputs: list[np.ndarray]) -> dict:
        predictions = [int(np.argmax(o[:task.num_labels])) for o in outputs]
        return classification_metrics(encoded.labels, predictions, task.num_labels)


SENTENCE_CLASSIFICATION = SentenceClassification()
