"""Own-data tasks: the same Task contract, built from `TrainConfig.custom` instead of a registry entry.

`get_task_for(config)` is what fit / evaluate / Run.load call: a registered task for `config.task`, or,
for task="custom", a Task over the user's files. Label names come from the training rows (sorted
unique) the first time and are written back into `config.custom["label_names"]` (and the training
language into `config.train_language`), so the run folder's config.json maps labels the same way at
evaluation, on any data.
"""
from __future__ import annotations

from ..data.custom import (CustomSpec, custom_label_names, custom_languages, custom_train_languages,
                           kind_of, load_custom)
from ..core.errors import XlpromptError
from .base import Task, get_task, register_task
from .formats import SENTENCE_CLASSIFICATION

# kind -> the task format that encodes and scores its frames; token tagging / spans add theirs here
KIND_FORMATS = {"classification": SENTENCE_CLASSIFICATION}


def _needs_config(*_args, **_kwargs):
    raise XlpromptError("Task 'custom' reads your own files: give the data and its columns (CLI: xlprompt train "
                        "--data-dir DIR --text-column C --label-column C; Python: TrainConfig(task='custom', "
                        "custom={'path': DIR, 'text_column': C, 'label_column': C})).")


# Listed by `xlprompt tasks`; its loaders only explain how to build the real one.
register_task(Task(name="custom", label_names=(), load=_needs_config, languages=_needs_config,
                   description="your own data: a folder of <language>/{train,dev,test}.{tsv,csv,jsonl}, split "
                               "files or one file with language/split columns, or hf:DATASET; "
                               "--data-dir DIR --text-column C [--text-pair-column C] --label-column C"))


def _train_language(spec: CustomSpec, config) -> str:
    """The (first) training language: its rows name the labels."""
    if isinstance(config.train_language, list):
        return config.train_language[0]
    if config.train_language:
        return config.train_language
    have = custom_train_languages(spec, config.data_dir)
    if len(have) == 1:
        return have[0]
    raise XlpromptError(f"Own data {spec.path} has training rows in {len(have)} languages "
                        f"({', '.join(have) or 'none'}); choose one with --train-lang.")


def custom_task(config) -> Task:
    """The Task over `config.custom`; resolves and records label names and the training language."""
    spec = CustomSpec.from_dict(config.custom or {})
    kind_of(spec)
    if spec.kind not in KIND_FORMATS:
        raise XlpromptError(f"Own data of kind {spec.kind!r} has no task format yet; kinds: {', '.join(KIND_FORMATS)}.")
    language = _train_language(spec, config)
    names = list(spec.label_names) if spec.label_names else custom_label_names(spec, language, config.data_dir)
    if len(names) < 2:
        raise XlpromptError(f"Own data {spec.path} has a single label ({names[0]!r}) in its {language} training "
                            "rows; classification needs at least two.")
    config.train_language = config.train_language or language
    config.custom = {**config.custom, "label_names": names}
    columns = ", ".join(f"{k.replace('_column', '')}={v!r}" for k, v in vars(spec).items()
                        if k.endswith("_column") and v)
    return Task(
        name="custom",
        label_names=tuple(names),
        load=lambda split, lang, data_dir=None: load_custom(spec, split, lang, names, data_dir),
        languages=lambda data_dir=None: custom_languages(spec, data_dir),
        train_language=language,
        format=KIND_FORMATS[spec.kind],
        pairs=bool(spec.text_pair_column),
        description=f"own data {spec.path} ({spec.kind}; {columns}); labels from the {language} training rows: "
                    f"{', '.join(names)}",
    )


def get_task_for(config) -> Task:
    """The task a config describes: registered by name, or built from `config.custom`."""
    if config.task == "custom":
        return custom_task(config)
    return get_task(config.task)
