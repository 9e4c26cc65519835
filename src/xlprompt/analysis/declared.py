"""How the declared settings and the registered methods read in the analysis: which store columns are
axes, which methods are of which kind (as they describe themselves), and how values and labels print."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.store import setting_columns
from ..prompts.config import METHOD_CONFIGS

def axes() -> tuple[str, ...]:
    """The run settings a store may vary: every declared setting with a column (seed is the replicate)."""
    return tuple(k for k in setting_columns() if k != "seed")


def prompt_methods() -> tuple[str, ...]:
    """Methods that train a prompt (input slots or per-layer prefixes), as they describe themselves."""
    return tuple(k for k, cls in METHOD_CONFIGS.items() if cls.enters is not None)


def methods_that(enters=None, trains_backbone=False) -> tuple[str, ...]:
    return tuple(k for k, cls in METHOD_CONFIGS.items()
                 if cls.enters == enters and cls.trains_backbone == trains_backbone)


# the kinds the studies compare, by what a method says of itself: (how it enters the model, trains the model)
KINDS = {"input": ("input", False), "prefix": ("prefix", False), "finetune": (None, True), "head": (None, False)}


def is_kind(methods: pd.Series, kind: str) -> pd.Series:
    """Which rows' methods are of a kind: input or prefix (deep) prompt, fine-tuning (no prompt, trains
    the model), head (neither)."""
    return methods.isin(methods_that(*KINDS[kind]))


def method_kind(method) -> str | None:
    cls = METHOD_CONFIGS.get(method)
    return next((k for k, v in KINDS.items() if cls is not None and (cls.enters, cls.trains_backbone) == v), None)



# ------------------------------------------------------------------------------------- labels


def model_label(model: str) -> str:
    """Short model name for axes: the last path component of a hub id or folder."""
    return Path(str(model).rstrip("/")).name or str(model)


def method_label(method: str) -> str:
    cls = METHOD_CONFIGS.get(method)
    return cls.label if cls is not None else str(method)


def freeze_label(frozen: bool) -> str:
    return "MF (model frozen)" if frozen else "no MF (model trained)"


def shots_label(shots) -> str:
    return "all" if shots is None or pd.isna(shots) else str(int(shots))


def series_label(row, cols) -> str:
    parts = []
    for col in cols:
        value = row[col]
        parts.append({"model": model_label, "method": method_label, "freeze_model": freeze_label,
                      "shots": lambda v: f"{shots_label(v)} shots"}.get(col, str)(value))
    return " · ".join(parts)


def show_value(column: str, value) -> str:
    """A setting's value as its declaration says it reads ("all" samples per class, not <NA>)."""
    s = setting_columns().get(column)
    if s is None:
        return "–" if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)
    return s.show(None if value is pd.NA else value)


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A table for readers: each declared setting's column printed the way it is declared."""
    out = frame.copy()
    for col in out.columns:
        if col in setting_columns() and col != "method":
            out[col] = [show_value(col, v) for v in out[col]]
        elif col == "method":
            out[col] = [method_label(v) for v in out[col]]
    return out


def held_fixed_text(chosen: list[dict]) -> str:
    """'shots 8 · epochs 30': the settings a study held at one value; a setting held at different values
    in different series lists them all (a method's option only where the method has it)."""
    values: dict[str, list[str]] = {}
    for entry in chosen:
        for key, value in (entry.get("fixed") or {}).items():
            declared = setting_columns().get(key)
            if value is None and declared is not None and declared.where == "method":
                continue  # a method option the series' method does not have
            shown_value = show_value(key, value)
            values.setdefault(key, [])
            if shown_value not in values[key]:
                values[key].append(shown_value)
    return " · ".join(f"{k.replace('_', ' ')} {' / '.join(v)}" for k, v in values.items())


def caption_of(study) -> str:
    """The study's caption and the settings it held fixed (a figure must say what it does not show)."""
    fixed = held_fixed_text(study.config.get("held_fixed") or [])
    return study.caption + (f" Held fixed: {fixed}." if fixed else "")
