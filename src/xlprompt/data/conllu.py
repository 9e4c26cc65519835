"""CoNLL-U reading for UD POS tagging: one row per sentence, the syntactic words and their UPOS tags.

A CoNLL-U sentence mixes three kinds of lines (https://universaldependencies.org/format.html):
integer ids (`5`) are syntactic words and carry the UPOS tag; ranges (`1-2`) are multi-word surface
tokens such as German "im" = "in dem", which have no tag of their own; decimal ids (`5.1`) are empty
nodes of enhanced dependencies, which are not in the text at all. UD POS scores the syntactic words
(XTREME does the same), so ranges and empty nodes are skipped and every integer id is kept; the README
word counts of `../shared/data/udpos` are counts of exactly these lines.

Layout read here: `<data_dir>/udpos/<language>/{train,dev,test}.conllu` (ISO 639-1 folder names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..core.errors import XlpromptError
from ..core.paths import default_data_dir

UPOS_TAGS: tuple[str, ...] = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
                              "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")
SPLITS: tuple[str, ...] = ("train", "dev", "test")


def parse_conllu(lines: Iterable[str], source: str = "<text>") -> list[tuple[list[str], list[str]]]:
    """(words, UPOS tags) per sentence. Errors name the source and line, since a broken treebank file
    would otherwise surface much later as a tag-id error with no location."""
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        # split on tabs only: some treebanks (Vietnamese VTB) have words that contain spaces
        cols = line.split("\t")
        if len(cols) != 10:
            raise XlpromptError(f"{source}, line {number}: expected 10 tab-separated CoNLL-U columns, "
                                f"found {len(cols)}: {line[:80]!r}")
        word_id = cols[0]
        if "-" in word_id or "." in word_id:  # multi-word token range / empty node: not a tagged word
            continue
        if not word_id.isdigit():
            raise XlpromptError(f"{source}, line {number}: bad word id {word_id!r} in column 1 (ID).")
        words.append(cols[1])
        tags.append(cols[3])
    if words:  # a file may end without the closing blank line
        sentences.append((words, tags))
    return sentences


def read_conllu(path: str | Path) -> list[tuple[list[str], list[str]]]:
    path = Path(path)
    with open(path, encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark
        return parse_conllu(handle, str(path))


def tagging_frame(sentences: list[tuple[list[str], list[str]]]) -> pd.DataFrame:
    """The frame every tagging loader returns. `label` is a constant: the training loop draws `shots`
    rows per label value, so with one value `--shots N` means N sentences (dev gets ceil(N/4))."""
    return pd.DataFrame({"tokens": [list(w) for w, _ in sentences], "tags": [list(t) for _, t in sentences],
                         "label": [0] * len(sentences)})


def resolve_data_dir(data_dir: str | Path | None, sub: str, what: str) -> Path:
    """`<data_dir>/<sub>`, with one clear error when there is no data folder or it lacks the task."""
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    if base is None:
        raise XlpromptError(f"No data folder for {what}: pass --data-dir or set XLPROMPT_DATA "
                            "(a folder holding `udpos/` and `ner/panx/`, like ../shared/data).")
    folder = base / sub
    if not folder.is_dir():
        raise XlpromptError(f"{what} data not found: {folder} does not exist (data folder {base}).")
    return folder


def languages_with(root: Path, file_name: str) -> list[str]:
    """Language folders under `root` that hold `file_name` (the evaluation split)."""
    return sorted(p.name for p in root.iterdir() if (p / file_name).is_file())


def split_file(root: Path, language: str, split: str, suffix: str, what: str, eval_file: str) -> Path:
    """`root/<language>/<split><suffix>`, or one error naming what the language (or the dataset) has."""
    if split not in SPLITS:
        raise XlpromptError(f"Unknown {what} split {split!r}; use one of: {', '.join(SPLITS)}.")
    path = root / language / f"{split}{suffix}"
    if not path.is_file():
        have = sorted(p.stem for p in (root / language).glob(f"*{suffix}")) if (root / language).is_dir() else []
        hint = f"{language} has only: {', '.join(have)}" if have else \
            f"languages: {', '.join(languages_with(root, eval_file))}"
        raise XlpromptError(f"No {what} {split} set for {language!r} ({path} missing); {hint}.")
    return path


def udpos_languages(data_dir: str | Path | None = None) -> list[str]:
    """Languages with a test set (the evaluation split), English included."""
    return languages_with(resolve_data_dir(data_dir, "udpos", "UD POS"), "test.conllu")


def load_udpos(split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    root = resolve_data_dir(data_dir, "udpos", "UD POS")
    path = split_file(root, language, split, ".conllu", "UD POS", "test.conllu")
    return tagging_frame(read_conllu(path))
