"""A task knows its data, labels and metric; it knows nothing of models or prompts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from ..core.errors import XlpromptError
from .formats import SENTENCE_CLASSIFICATION, classification_metrics  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Task:
    """A registered task: `load(split, language, data_dir)` gives a DataFrame; `format` says how it is
    encoded, which head reads it, and how outputs become metrics."""

    name: str
    label_names: tuple[str, ...]
    load: Callable[[str, str, str | None], pd.DataFrame]
    languages: Callable[[str | None], list[str]]
    train_language: str = "eng_Latn"
    train_split: str = "train"
    dev_split: str = "dev"
    eval_split: str = "test"
    format: Any = SENTENCE_CLASSIFICATION
    # label words for verbalizer heads, per model family (PRODUCT.md); xglm's list is the generic default
    label_words: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""
    pairs: bool = False  # each example is two texts (premise/hypothesis, sentence 1/2)
    # the split whose rows translate each other across languages (same index_id): what alignment reads
    parallel_split: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def head(self) -> str:
        """Which head reads the format: "classification" (sentences, pairs), "tagging" or "span"."""
        return getattr(self.format, "head", "classification")

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.format.metric_names

    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int):
        return self.format.encode(tokenizer, frame, max_length)

    def score(self, frame: pd.DataFrame, encoded, outputs) -> dict:
        return self.format.score(self, frame, encoded, outputs)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise XlpromptError(f"Unknown task {name!r}. Known tasks: {', '.join(task_names())} "
                            "(`xlprompt tasks` lists them).")
    return _TASKS[name]


def task_names() -> list[str]:
    return sorted(_TASKS)
