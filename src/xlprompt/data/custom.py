"""Your own data, with configurable columns. `path` is one of (the first that matches wins):
`hf:NAME`, a Hugging Face dataset (`datasets`, imported lazily; languages are its configurations, or
the values of `language_column`); a file `x.{tsv,csv,jsonl}` with a language and a split column; a
folder of `{train,dev,test}.{tsv,csv,jsonl}` with a language column; a folder of
`<language>/{train,dev,test}.{tsv,csv,jsonl}`. `validation`/`valid` mean dev. A language with train but
no dev split trains on hash buckets 0-89 of its train rows and early-stops on 90-99 (seed-free).

TSV: tab-separated with a header, no quoting (sentences keep their `"`); CSV: standard quoting; JSONL:
one object per line. Every malformed row raises XlpromptError naming file, line and column. What a row
holds depends on `kind`: classification (text, optional pair, label) is built in; token tagging and
spans plug in through `KINDS`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..core.errors import XlpromptError
from .custom_source import FORMATS, SPLITS, Row, Source
from .pairs import hash_bucket


@dataclass(frozen=True)
class CustomSpec:
    """Where the data is and which columns hold what; `TrainConfig.custom` holds it as a dict."""

    path: str
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    language_column: str | None = None
    split_column: str | None = None
    format: str | None = None          # tsv | csv | jsonl; None: from each file's extension
    kind: str = "classification"       # which row reader (KINDS) and task format apply
    tokens_column: str | None = None   # for kind="tagging" (reader plugged in by the tagging task)
    tags_column: str | None = None
    label_names: list[str] | None = None  # resolved from the training data at fit time, then saved

    @classmethod
    def from_dict(cls, d: dict) -> "CustomSpec":
        if not isinstance(d, dict):
            raise XlpromptError(f"custom data settings must be a dict like {{'path': ..., 'text_column': ...}}, "
                                f"not {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise XlpromptError(f"Unknown custom data keys {unknown}; known: {sorted(names)}.")
        if not d.get("path"):
            raise XlpromptError("custom data needs a 'path': a folder, a file, or hf:DATASET (CLI: --data-dir).")
        spec = cls(**{**d, "path": str(d["path"])})
        if spec.format is not None and spec.format not in FORMATS:
            raise XlpromptError(f"Unknown custom data format {spec.format!r}; use one of: {', '.join(FORMATS)}.")
        return spec


# ------------------------------------------------------------------------------------------ kinds


@dataclass(frozen=True)
class Kind:
    """What a row holds for one kind of task: the columns it needs, its raw labels (to collect label
    names from training rows) and how checked rows become the task format's frame."""

    columns: Callable[[CustomSpec], list[str]]
    labels: Callable[[CustomSpec, dict], list[str]]
    frame: Callable[[CustomSpec, list[Row], dict[str, int], Callable], pd.DataFrame]


def _text(value, fail, column: str) -> str:
    if not isinstance(value, str):
        raise fail(column, f"expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise fail(column, "the text is empty")
    return value


def _label(value) -> str:
    return "" if value is None else str(value).strip()


def _classification_frame(spec: CustomSpec, rows: list[Row], label_id: dict[str, int], fail) -> pd.DataFrame:
    out = {"index_id": [], "text": [], "label": []}
    if spec.text_pair_column:
        out["text_pair"] = []
    for line, values in rows:
        def bad(column, what, line=line):
            return fail(line, column, what)
        out["index_id"].append(line)
        out["text"].append(_text(values[spec.text_column], bad, spec.text_column))
        if spec.text_pair_column:
            out["text_pair"].append(_text(values[spec.text_pair_column], bad, spec.text_pair_column))
        raw = _label(values[spec.label_column])
        if not raw:
            raise bad(spec.label_column, "the label is empty")
        if raw not in label_id:
            raise bad(spec.label_column, f"label {raw!r} was not seen in training (labels: {', '.join(label_id)})")
        out["label"].append(label_id[raw])
    return pd.DataFrame(out).astype({"index_id": np.int64, "label": np.int64})


KINDS: dict[str, Kind] = {
    "classification": Kind(
        columns=lambda s: [c for c in (s.text_column, s.text_pair_column, s.label_column) if c],
        labels=lambda s, values: [_label(values.get(s.label_column))],
        frame=_classification_frame),
}


def kind_of(spec: CustomSpec) -> Kind:
    if spec.kind not in KINDS:
        raise XlpromptError(f"Own data of kind {spec.kind!r} is not supported yet; kinds: {', '.join(KINDS)}.")
    return KINDS[spec.kind]


# -------------------------------------------------------------------------------------------- API


def _units(spec: CustomSpec, data_dir):
    """`data_dir`, when given, replaces spec.path: evaluate the same columns on other files."""
    return Source(spec, str(data_dir) if data_dir is not None else spec.path, kind_of(spec).columns(spec)).units()


def _rows(spec: CustomSpec, split: str, language: str, data_dir) -> tuple[str, list[Row]]:
    if split not in SPLITS:
        raise XlpromptError(f"Unknown split {split!r}; use one of: {', '.join(SPLITS)}.")
    units = _units(spec, data_dir)
    if split in ("train", "dev") and ("dev", language) not in units and ("train", language) in units:
        where, load = units[("train", language)]  # no dev split: hold out hash buckets 90-99 of train
        text = kind_of(spec).columns(spec)[0]
        keep = [r for r in load() if (hash_bucket(str(r[1].get(text))) >= 90) == (split == "dev")]
        return where + (" (hash buckets 90-99)" if split == "dev" else " (hash buckets 0-89)"), keep
    if (split, language) not in units:
        have = sorted({lang for _, lang in units})
        raise XlpromptError(f"Own data has no {split} split for language {language!r} "
                            f"(languages: {', '.join(have) or 'none'}).")
    where, load = units[(split, language)]
    return where, load()


def custom_label_names(spec: CustomSpec, language: str, data_dir=None) -> list[str]:
    """Sorted unique labels of the training rows (numerically when they are all integers)."""
    where, rows = _rows(spec, "train", language, data_dir)
    kind = kind_of(spec)
    labels = {label for _, values in rows for label in kind.labels(spec, values) if label}
    if not labels:
        raise XlpromptError(f"{where} has no labelled training rows for {language!r}.")
    numeric = all(label.lstrip("-").isdigit() for label in labels)
    return sorted(labels, key=(lambda x: (int(x), x)) if numeric else None)


def load_custom(spec: CustomSpec, split: str, language: str, label_names, data_dir=None) -> pd.DataFrame:
    where, rows = _rows(spec, split, language, data_dir)
    if not rows:
        raise XlpromptError(f"{where} has no {split} rows for language {language!r}.")

    def fail(line, column, what):
        unit = "row" if where.startswith("hf:") else "line"
        return XlpromptError(f"{where}, {unit} {line}, column {column!r}: {what}.")

    return kind_of(spec).frame(spec, rows, {name: i for i, name in enumerate(label_names)}, fail)


def custom_languages(spec: CustomSpec, data_dir=None, split: str = "test") -> list[str]:
    """Languages with a `split` (evaluation: test) split; every language when none has one."""
    units = _units(spec, data_dir)
    with_split = sorted({lang for s, lang in units if s == split})
    return with_split or sorted({lang for _, lang in units})


def custom_train_languages(spec: CustomSpec, data_dir=None) -> list[str]:
    """Languages with training rows (a dev-only language cannot be the training language)."""
    return sorted({lang for s, lang in _units(spec, data_dir) if s == "train"})
