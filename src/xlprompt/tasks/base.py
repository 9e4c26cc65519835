"""A task knows its data, labels and metric; it knows nothing of models or prompts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import XlpromptError


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> dict:
    from sklearn.metrics import f1_score

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return {
        "accuracy": float((labels == predictions).mean()) if len(labels) else float("nan"),
        "macro_f1": float(f1_score(labels, predictions, labels=list(range(num_labels)),
                                   average="macro", zero_division=0)),
        "n": int(len(labels)),
    }


@dataclass(frozen=True)
class Task:
    """`load(split, language, data_dir)` returns a DataFrame with `text` (and `text_pair`) and `label`."""

    name: str
    label_names: tuple[str, ...]
    load: Callable[[str, str, str | None], pd.DataFrame]
    languages: Callable[[str | None], list[str]]
    train_language: str = "eng_Latn"
    train_split: str = "train"
    dev_split: str = "dev"
    eval_split: str = "test"
    metric_names: tuple[str, ...] = ("accuracy", "macro_f1")
    # label words for verbalizer heads, per model family (PRODUCT.md); xglm's list is the generic default
    label_words: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def metrics(self, labels, predictions) -> dict:
        return classification_metrics(labels, predictions, self.num_labels)


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
