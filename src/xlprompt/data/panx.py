"""PAN-X / WikiANN NER in XTREME's processed form: `token<TAB>tag` lines, a blank line between sentences.

Layout read here: `<data_dir>/ner/panx/<language>/{train,dev,test}.tsv` (ISO 639-1 folder names). The
shared copy has English train/dev and labelled dev sets only for the other languages (XTREME's
distributed test files carry no tags), so the task evaluates on `dev`; a user who adds labelled
`test.tsv` files can evaluate them with `--split test`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..core.errors import XlpromptError
from .conllu import languages_with, resolve_data_dir, split_file, tagging_frame

PANX_TAGS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")


def parse_panx(lines: Iterable[str], source: str = "<text>") -> list[tuple[list[str], list[str]]]:
    """(tokens, IOB2 tags) per sentence; errors name the source and line."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0] or not cols[1]:
            raise XlpromptError(f"{source}, line {number}: expected `token<TAB>tag`, got {line[:80]!r}")
        # XTREME's raw (unprocessed) files prefix tokens with the language ("en:Paris"); the processed
        # files shipped here do not, so a token is taken as is
        tokens.append(cols[0])
        tags.append(cols[1])
    if tokens:  # the last sentence may lack its closing blank line
        sentences.append((tokens, tags))
    return sentences


def read_panx(path: str | Path) -> list[tuple[list[str], list[str]]]:
    path = Path(path)
    with open(path, encoding="utf-8-sig") as handle:
        return parse_panx(handle, str(path))


def panx_languages(data_dir: str | Path | None = None) -> list[str]:
    """Languages with a labelled dev set (the evaluation split), English included."""
    return languages_with(resolve_data_dir(data_dir, "ner/panx", "PAN-X"), "dev.tsv")


def load_panx(split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    root = resolve_data_dir(data_dir, "ner/panx", "PAN-X")
    path = split_file(root, language, split, ".tsv", "PAN-X", "dev.tsv")
    return tagging_frame(read_panx(path))
