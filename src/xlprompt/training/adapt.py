"""Per-language adaptation: continue a trained run on a few examples of one target language.

`adapt(RUN, language, shots)` is `fit` with a config that says so: the source run's config with
`start=RUN` (its prompt and head are the starting point, the model stays frozen), `train_language` the
target and `shots` per class from the target's train split (dev: ceil(shots/4) per class from its dev
split; never its test split). The result is an ordinary run folder, servable beside the source run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.errors import XlpromptError
from ..runs.run import Run
from .fit import fit

ADAPT_EPOCHS = 10  # a few dozen sentences: ten passes are a few seconds of training


def adapt_config(source, language: str, shots: int, **overrides):
    """The config of an adaptation run of `source` (a run folder or a loaded Run with a path)."""
    run_dir = Path(source.path if isinstance(source, Run) else source)
    config = source.config if isinstance(source, Run) else Run.read_config(run_dir)
    if not config.freeze_model or config.method.trains_backbone:
        raise XlpromptError(f"{run_dir} trained the model itself: adapt continues a prompt and head on the frozen "
                            "model only.")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise XlpromptError(f"adapt needs --shots >= 1 examples per class, got {shots!r}.")
    changes = {"train_language": language, "shots": shots, "start": str(run_dir.resolve()), "epochs": ADAPT_EPOCHS,
               "target_shots": None, "target_languages": None, **overrides}
    return dataclasses.replace(config, **changes)


def adapt(source, language: str, shots: int, *, progress: bool = True, device=None, dtype=None, **overrides) -> Run:
    """Continue `source` (a run folder) on `shots` examples per class of `language`; returns the new Run."""
    config = adapt_config(source, language, shots, **overrides)
    from ..tasks.custom import get_task_for

    task = get_task_for(config)
    if language not in task.languages(config.data_dir):
        raise XlpromptError(f"{task.name} has no language {language!r}; `xlprompt languages --task {task.name}` "
                            "lists them.")
    smallest = task.load(task.train_split, language, config.data_dir)["label"].value_counts().min()
    if smallest < shots:
        raise XlpromptError(f"{language}'s training split has {smallest} examples in its smallest class: choose "
                            f"--shots of at most {smallest}.")
    return fit(config, progress=progress, device=device, dtype=dtype)
