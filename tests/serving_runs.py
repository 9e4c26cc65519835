"""Real run folders on the tiny models for the serving tests: a second toy task with three labels, so
heads of different sizes meet in one batch, and a one-epoch trainer that writes run folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xlprompt import TrainConfig, fit
from xlprompt.prompts.config import DeepPromptConfig, HeadOnlyConfig, InputPromptConfig

FIRST_WORDS = ("beta", "alpha", "yes")


def toy3_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    texts = [FIRST_WORDS[y] + " " + " ".join(f"w{k}" for k in rng.integers(0, 40, rng.integers(1, 9)))
             for y in labels]
    return pd.DataFrame({"index_id": np.arange(n), "text": texts, "label": labels.astype(int)})


def register_toy3():
    from xlprompt.tasks import Task, register_task

    sizes = {"train": (48, 11), "dev": (12, 12), "test": (24, 13)}
    return register_task(Task(name="toy3", label_names=("b", "a", "y"),
                              load=lambda split, language, data_dir=None: toy3_frame(*sizes[split]),
                              languages=lambda data_dir=None: ["eng_Latn"],
                              label_words={"xglm": ["no", "yes", "beta"]}, description="3-label toy task"))


# name -> (task, method, extra config): input prompts of lengths 1, 3, 5, deep prompts of lengths 2 and 4, a
# head-only run; two and three labels; one run truncating at 6 tokens, one with PEFT's prompt-first layout
RUNS = {
    "p1": ("toy", InputPromptConfig(prompt_length=1), {"max_length": 6}),
    "p3": ("toy3", InputPromptConfig(prompt_length=3, reparam="mlp", reparam_hidden=8), {}),
    "p5": ("toy", InputPromptConfig(prompt_length=5, position="start"), {}),
    "d2": ("toy3", DeepPromptConfig(prompt_length=2), {}),
    "d4": ("toy", DeepPromptConfig(prompt_length=4), {"pooling": "first"}),
    "h0": ("toy3", HeadOnlyConfig(), {}),
}


def train_run(model_dir: Path, out: Path, task: str, method, seed: int = 0, **extra) -> Path:
    config = TrainConfig(task=task, model=str(model_dir), method=method, epochs=1, batch_size=16, lr=0.05,
                         seed=seed, **extra)
    fit(config, progress=False).save(out)
    return out


def train_runs(model_dir: Path, root: Path, names=None) -> dict[str, Path]:
    names = names or list(RUNS)
    return {name: train_run(model_dir, root / name, RUNS[name][0], RUNS[name][1], seed=i, **RUNS[name][2])
            for i, name in enumerate(names)}


TEXTS = ["alpha w1 w2", "beta w3", "yes w4 w5 w6 w7 w8 w9 w10 w11 w12", "alpha", "beta w20 w21 w22 w23",
         "yes w30 w31", "w1 w2 w3 alpha beta yes w4 w5 w6 w7 w8", "beta beta", "alpha w39 w38 w37 w36",
         "yes", "w5 w6", "alpha yes beta"]


def runs_per_family(tiny_model_dir, tmp_path_factory, prefix: str):
    """make(family) -> that family's trained runs, trained once per module on first use."""
    register_toy3()
    made = {}

    def make(family):
        if family not in made:
            made[family] = train_runs(tiny_model_dir(family), tmp_path_factory.mktemp(f"{prefix}-{family}"))
        return made[family]

    return make
