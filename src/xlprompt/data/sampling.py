"""k-shot sampling: n examples per class, reproducible from a seed, with no torch dependency.

Few-shot results swing a lot with which examples are drawn, so the draw must be a pure function of
(input frame, n, seed). A private numpy Generator (PCG64) gives that without touching global RNG
state (torch's or `random`'s, which training code reseeds). The stream is the same on every
platform; NEP 19 lets numpy change Generator streams between feature releases, so pin numpy when
comparing draws across environments.

Draws are nested: for one seed, the 4-shot set is a subset of the 8-shot set (each class is
permuted once and the first n taken), so curves over n compare growing sets, not unrelated ones.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import XlpromptError


def _check_n(n_per_class: Any) -> int | None:
    """None or "all" (any case) -> None (take everything); otherwise a non-negative int."""
    if n_per_class is None:
        return None
    if isinstance(n_per_class, str):
        text = n_per_class.strip().lower()
        if text in {"all", "full"}:
            return None
        if text.isdigit():
            return int(text)
        raise XlpromptError(f"Samples per class must be a whole number or 'all', not {n_per_class!r}.")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, numbers.Integral):
        raise XlpromptError(f"Samples per class must be a whole number or 'all', not {n_per_class!r}.")
    if n_per_class < 0:
        raise XlpromptError(f"Samples per class must be 0 or more, not {n_per_class}.")
    return int(n_per_class)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise XlpromptError(f"The sampling seed must be a non-negative integer, not {seed!r}.")
    return int(seed)


def k_shot(df: pd.DataFrame, n_per_class: int | str | None, seed: int, label_column: str = "label") -> pd.DataFrame:
    """Draw `n_per_class` rows of every class, without replacement, in a shuffled order.

    - `n_per_class` None or "all" keeps every row (still shuffled, so batches mix classes).
    - A class with fewer than n rows contributes all its rows, without error: SIB-200's smallest
      dev class has 8 rows, and failing a 16-shot run over that would help nobody. The result then
      has fewer than n * classes rows; count per class with `value_counts` if that matters.
    - Deterministic in (frame contents and order, n, seed); the order is shuffled, not grouped by
      class. The returned frame has a fresh 0..len-1 index; `index_id` keeps provenance.
    """
    n = _check_n(n_per_class)
    seed = _check_seed(seed)
    if not isinstance(df, pd.DataFrame):
        raise XlpromptError(f"k_shot needs a pandas DataFrame, not {type(df).__name__}.")
    if label_column not in df.columns:
        raise XlpromptError(f"The frame has no label column {label_column!r} (columns: {', '.join(map(str, df.columns))}).")
    rng = np.random.default_rng(seed)
    labels = df[label_column].to_numpy()
    if n is None:
        chosen = np.arange(len(df))
    else:
        parts = []
        for value in sorted(pd.unique(labels).tolist()):
            rows = np.flatnonzero(labels == value)
            parts.append(rows[rng.permutation(len(rows))[:n]])  # permute all, take a prefix: nested in n
        chosen = np.concatenate(parts) if parts else np.arange(0)
    order = chosen[rng.permutation(len(chosen))]
    return df.iloc[order].reset_index(drop=True)


def dev_size(n_per_class: int) -> int:
    """Dev examples per class for an n-shot run: ceil(n / 4).

    A quarter keeps the dev set proportionate to the training budget (a 16-shot run should not
    quietly validate on 99 extra labelled sentences) while leaving at least one per class.
    """
    n = _check_n(n_per_class)
    if n is None:
        raise XlpromptError("dev_size needs a number of shots; with 'all' shots use the whole dev split.")
    return math.ceil(n / 4)


def few_shot_splits(train_df: pd.DataFrame, dev_df: pd.DataFrame, n_per_class: int | str | None,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(n per class from train, ceil(n/4) per class from dev); n None/"all" keeps both splits whole
    (shuffled). The same seed drives both draws; they are independent because the frames differ."""
    n = _check_n(n_per_class)
    if n is None:
        return k_shot(train_df, None, seed), k_shot(dev_df, None, seed)
    return k_shot(train_df, n, seed), k_shot(dev_df, dev_size(n), seed)


def position_digest(i: int) -> str:
    return hashlib.sha1(str(i).encode("ascii")).hexdigest()


def cap_rows(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """At most `limit` rows of an evaluation set, by a rule that needs no seed and keeps parallel sets
    parallel: the rows whose position (0, 1, 2, ... in file order) has the smallest SHA-1 digest of its
    decimal string, kept in file order. Two languages' files of one parallel set (XNLI, PAWS-X, SIB-200
    test) keep the same positions, so row i still translates row i; a capped set of a larger cap contains
    it. None, or a limit at or above the row count, keeps every row."""
    if limit is None:
        return df
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise XlpromptError(f"The per-language cap must be a whole number >= 1 (or none), not {limit!r}.")
    if len(df) <= limit:
        return df
    keep = sorted(sorted(range(len(df)), key=position_digest)[:limit])
    return df.iloc[keep].reset_index(drop=True)


def language_seed(seed: int, language: str) -> int:
    """The draw seed of a language other than the first source: the run's seed and the language code mixed
    by SHA-1. A parallel corpus (SIB-200: every language translates the same sentences) then gives each
    language other sentences, and adding a language to a list never changes another language's draw."""
    digest = hashlib.sha1(f"{_check_seed(seed)}:{language}".encode("utf-8")).hexdigest()
    return int(digest[:8], 16)


def multilingual_splits(load, sources: list[str], shots, seed: int, targets: list[str] = (),
                        target_shots: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and dev rows drawn from several languages, each row tagged with its `language`.

    `load(split, language)` returns a split's frame ("train" / "dev" as the caller names them); one source
    and no targets give exactly today's frames (no `language` column). Sources:
    `shots` per class per language from train and ceil(shots/4) per class from dev (`few_shot_splits`); the
    first source draws with `seed` itself, so a run with one source draws exactly what it always did, the
    others with `language_seed(seed, language)`. Targets: `target_shots` per class from each target's
    train split only (never its test split; dev stays the sources'), drawn with `language_seed`; a class
    with fewer rows than that is an error, since a target's few examples are the point of the setting.
    """
    if len(sources) == 1 and not targets:
        return few_shot_splits(load("train", sources[0]), load("dev", sources[0]), shots, seed)
    trains, devs = [], []
    for i, language in enumerate(sources):
        train, dev = few_shot_splits(load("train", language), load("dev", language), shots,
                                     seed if i == 0 else language_seed(seed, language))
        trains.append(train.assign(language=language))
        devs.append(dev.assign(language=language))
    for language in targets:
        train = load("train", language)
        smallest = train["label"].value_counts().min() if len(train) else 0
        if target_shots is None or target_shots < 1 or smallest < target_shots:
            raise XlpromptError(f"{target_shots} target examples per class from {language}: its training split has "
                                f"{smallest} in its smallest class. Choose --target-shots of at most {smallest}.")
        trains.append(k_shot(train, target_shots, language_seed(seed, language)).assign(language=language))
    return pd.concat(trains, ignore_index=True), pd.concat(devs, ignore_index=True)
