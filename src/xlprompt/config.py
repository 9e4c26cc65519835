"""The resolved configuration of a training run: what `xlprompt train` parses into and run folders keep."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import XlpromptError
from .prompts.config import InputPromptConfig, method_from_dict


@dataclass
class TrainConfig:
    task: str = "sib200"
    model: str = "multilingual-e5-small"
    method: Any = field(default_factory=InputPromptConfig)
    train_language: str | None = None  # None: the task's default (English)
    shots: int | None = None           # samples per class from train; None = all; dev gets ceil(n/4)
    seed: int = 0
    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-3                   # prompt learning rate (Philippy et al.)
    head_lr: float = 5e-2              # a freshly initialised linear head needs more than the prompt's 5e-3
    warmup: float = 0.1
    max_length: int = 128
    weight_decay: float = 0.0
    head_weight_decay: float | None = None  # AdamW's decoupled decay on the trained head alone; None: weight_decay
    freeze_model: bool | None = None   # None: the method's default (frozen except for finetune)
    model_lr: float = 2e-5             # backbone learning rate when it trains (no MF, finetune)
    pooling: str = "mean"              # encoder head: mean over real positions (e5) or first token
    loss_over: str = "vocabulary"      # decoder verbalizer loss: whole vocabulary (Philippy) or label words
    label_words: list[str] | None = None  # decoder verbalizer; None: the task's words for the model family
    data_dir: str | None = None
    eval_batch_size: int = 64
    # own data (task="custom"): {path, text_column, text_pair_column, label_column, language_column,
    # split_column, format, kind}; label_names is filled from the training rows and saved with the run
    custom: dict | None = None
    # prompt runs: random = a freshly initialised head; probe = the converged linear probe on the
    # unprompted frozen model (probe.py), fitted on the same training sentences, C chosen on dev
    head_init: str = "random"

    def __post_init__(self):
        if isinstance(self.method, dict):
            self.method = method_from_dict(self.method)
        if self.freeze_model is None:
            self.freeze_model = not self.method.trains_backbone
        if self.method.trains_backbone and self.freeze_model:
            raise XlpromptError("Fine-tuning trains the model: drop --freeze (or use --method head for a "
                                "frozen model with a trained head).")
        if self.shots is not None and self.shots < 1:
            raise XlpromptError(f"--shots must be >= 1 (or omitted for all), got {self.shots}.")
        if self.epochs < 1:
            raise XlpromptError(f"--epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise XlpromptError(f"--batch-size must be >= 1, got {self.batch_size}.")
        if (self.task == "custom") != (self.custom is not None):
            raise XlpromptError("Own data needs both task='custom' and custom={'path': ..., 'text_column': ..., "
                                "'label_column': ...} (CLI: --data-dir DIR --text-column C --label-column C).")
        if self.custom is not None:
            from .data.custom import CustomSpec

            CustomSpec.from_dict(self.custom)  # unknown keys fail here, before any model loads
        if self.head_init not in ("random", "probe"):
            raise XlpromptError(f"Unknown head_init {self.head_init!r}: use 'random' or 'probe'.")
        if self.head_weight_decay is not None and self.head_weight_decay < 0:
            raise XlpromptError(f"head_weight_decay must be >= 0 (or None for weight_decay), got {self.head_weight_decay}.")
        if not 0.0 <= self.warmup < 1.0:
            raise XlpromptError(f"warmup is a fraction of training steps in [0, 1), got {self.warmup}.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method"] = dataclasses.asdict(self.method)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise XlpromptError(f"Unknown config keys {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**d)
