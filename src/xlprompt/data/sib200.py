"""SIB-200 topic classification (Adelani et al. 2023): 7 topics, 205 languages, one frame per split.

Three sources give the same frame (columns index_id:int64, text:str, label:int64 into LABELS, rows in
file order):

* "packaged": the copy shipped inside xlprompt (resources/sib200.parquet, ~11 MB). It works offline
  with no setup, which is what most runs want; it is read once per process and then sliced.
* "dir": a folder in the upstream layout (`<code>/{train,dev,test}.tsv`), for checking the packaged
  copy against the source or for running on a modified copy.
* "hub": the Hugging Face dataset Davlan/sib200, through the optional `datasets` package.

"auto" (the default) uses "dir" when a data_dir is passed and "packaged" otherwise, so a caller who
points at a folder gets that folder and everyone else gets the zero-setup path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..core.errors import XlpromptError
from ..core.paths import default_data_dir
from .languages import unknown_language_message

# The order of labels.txt in every upstream language folder; label ids index into this list.
LABELS: list[str] = ["science/technology", "travel", "politics", "sports", "health", "entertainment", "geography"]
SPLITS: tuple[str, ...] = ("train", "dev", "test")
SOURCES: tuple[str, ...] = ("auto", "packaged", "dir", "hub")
REQUIRED_COLUMNS: tuple[str, ...] = ("index_id", "category", "text")
HUB_DATASET = "Davlan/sib200"
HUB_SPLITS: dict[str, str] = {"train": "train", "dev": "validation", "test": "test"}
PACKAGED_FILE = "sib200.parquet"
LANGUAGE_DIR_RE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_LABEL_ID = {name: i for i, name in enumerate(LABELS)}


def _frame(index_ids: Any, texts: Iterable[str], labels: Any) -> pd.DataFrame:
    """The one frame layout every source returns, so sources compare equal with `DataFrame.equals`."""
    return pd.DataFrame({
        "index_id": np.asarray(index_ids, dtype=np.int64),
        "text": list(texts),
        "label": np.asarray(labels, dtype=np.int64),
    })


def _check_split(split: str) -> str:
    if split not in SPLITS:
        hint = " (the Hugging Face 'validation' split is called 'dev' here)" if split == "validation" else ""
        raise XlpromptError(f"Unknown SIB-200 split {split!r}{hint}; use one of: {', '.join(SPLITS)}.")
    return split


def _resolve_source(source: str, data_dir: str | Path | None) -> str:
    if source not in SOURCES:
        raise XlpromptError(f"Unknown SIB-200 source {source!r}; use one of: {', '.join(SOURCES)}.")
    if source == "auto":
        return "dir" if data_dir is not None else "packaged"
    if data_dir is not None and source != "dir":
        raise XlpromptError(
            f"data_dir={str(data_dir)!r} is only read with source='dir' (or 'auto'); "
            f"drop data_dir to use source={source!r}."
        )
    return source


# ---------------------------------------------------------------------------------------------- TSV


def read_sib200_tsv(path: str | Path) -> pd.DataFrame:
    """Read and validate one upstream TSV (index_id, category, text; extra columns ignored).

    The format is plain tab-separated lines with no quoting: many sentences contain `"` (479 of the
    615 files parse differently with csv quoting on) and a sentence may be "NA" or "null". Parsing
    by hand, rather than with pandas.read_csv(quoting=QUOTE_NONE, keep_default_na=False), gives the
    same frames on the real data and also catches what read_csv lets through: a stray tab in a
    sentence (read_csv silently shifts the first row into an index column or truncates it) and
    rows with missing fields. Every problem names the file and the 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise XlpromptError(f"SIB-200 file {path} is missing; each language folder needs train.tsv, dev.tsv "
                            "and test.tsv (or use source='packaged').")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XlpromptError(f"SIB-200 file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    # split on "\n" only: str.splitlines would also break on U+2028/U+0085 inside sentences
    lines = [line[:-1] if line.endswith("\r") else line for line in content.split("\n")]
    if not any(line.strip() for line in lines):
        raise XlpromptError(f"SIB-200 file {path} is empty; expected a header 'index_id<TAB>category<TAB>text' "
                            "and one sentence per line.")
    header = [name.strip() for name in lines[0].split("\t")]
    for column in REQUIRED_COLUMNS:
        if column not in header:
            raise XlpromptError(f"SIB-200 file {path} has no column {column!r} (found: {', '.join(header)}); "
                                f"the header must name {', '.join(REQUIRED_COLUMNS)}, tab-separated.")
    col_id, col_cat, col_text = (header.index(c) for c in REQUIRED_COLUMNS)
    ids: list[int] = []
    labels: list[int] = []
    texts: list[str] = []
    seen: set[int] = set()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines, including the one after the final newline

        def fail(what: str) -> XlpromptError:
            return XlpromptError(f"SIB-200 file {path}, line {lineno}: {what}")

        fields = line.split("\t")
        if len(fields) != len(header):
            raise fail(f"{len(fields)} tab-separated fields where the header has {len(header)}; "
                       "a sentence must not contain a tab.")
        raw_id, category, text = fields[col_id].strip(), fields[col_cat].strip(), fields[col_text]
        try:
            index_id = int(raw_id)
        except ValueError:
            raise fail(f"index_id {raw_id!r} is not an integer.") from None
        if index_id in seen:
            raise fail(f"index_id {index_id} appears twice; rows align across languages by index_id.")
        if category not in _LABEL_ID:
            raise fail(f"category {category!r} is not a SIB-200 label; expected one of: {', '.join(LABELS)}.")
        if not text.strip():
            raise fail("the text is empty.")
        seen.add(index_id)
        ids.append(index_id)
        labels.append(_LABEL_ID[category])
        texts.append(text)
    if not ids:
        raise XlpromptError(f"SIB-200 file {path} is empty: it has a header but no sentences.")
    return _frame(ids, texts, labels)


def _language_dirs(root: Path) -> list[str]:
    """Sorted codes of the language folders in `root` (names like eng_Latn; __MACOSX, zips ignored)."""
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and LANGUAGE_DIR_RE.match(p.name))
    except OSError:
        return []


def find_sib200_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding the language folders: `data_dir` itself or its `sib200/` subfolder.

    Accepting both lets one XLPROMPT_DATA root serve several datasets while a direct path to a copy
    of upstream `data/annotated` also works. Without data_dir, `default_data_dir()` is used.
    """
    if data_dir is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise XlpromptError("No SIB-200 folder given: pass data_dir=..., set XLPROMPT_DATA, "
                                "or use source='packaged' (the copy shipped with xlprompt).")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise XlpromptError(f"Data folder {root} does not exist; pass the folder holding the SIB-200 language "
                            "folders (eng_Latn/, ...) or its parent, or omit data_dir to use the packaged copy.")
    if not root.is_dir():
        raise XlpromptError(f"Data folder {root} is a file, not a folder; pass the folder holding eng_Latn/ etc.")
    for candidate in (root, root / "sib200"):
        if candidate.is_dir() and _language_dirs(candidate):
            return candidate
    raise XlpromptError(f"{root} has no SIB-200 language folders (like eng_Latn/ with train.tsv, dev.tsv, "
                        "test.tsv), neither directly nor in a sib200/ subfolder.")


def _load_dir(split: str, language: str, data_dir: str | Path | None) -> pd.DataFrame:
    root = find_sib200_dir(data_dir)
    folder = root / language
    if not folder.is_dir():
        available = _language_dirs(root)
        raise XlpromptError(unknown_language_message(language, available, where=f" (no folder {folder})"))
    return read_sib200_tsv(folder / f"{split}.tsv")


# ----------------------------------------------------------------------------------------- packaged


@dataclass(frozen=True)
class _Packaged:
    """The whole packaged table in memory plus (language, split) -> row span, for O(1) slicing."""

    table: Any  # pyarrow.Table
    spans: dict[tuple[str, str], tuple[int, int]]
    languages: list[str]


def _codes(column: Any) -> tuple[np.ndarray, list[str]]:
    """Integer codes and their values for a (possibly dictionary-encoded) arrow string column."""
    arr = column.combine_chunks()
    if not hasattr(arr, "indices"):
        arr = arr.dictionary_encode()
    return arr.indices.to_numpy(zero_copy_only=False), arr.dictionary.to_pylist()


@lru_cache(maxsize=1)
def _packaged() -> _Packaged:
    """Read sib200.parquet once per process (~0.3 s, ~45 MB in memory); later loads only slice it."""
    import pyarrow.parquet as pq

    res = resources.files("xlprompt.data").joinpath("resources", PACKAGED_FILE)
    try:
        with resources.as_file(res) as path:
            table = pq.read_table(path)
    except FileNotFoundError:
        raise XlpromptError(f"The packaged SIB-200 table xlprompt/data/resources/{PACKAGED_FILE} is missing; "
                            "reinstall xlprompt, or pass data_dir=<SIB-200 folder>.") from None
    lang_idx, lang_names = _codes(table.column("language"))
    split_idx, split_names = _codes(table.column("split"))
    key = lang_idx.astype(np.int64) * len(split_names) + split_idx
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    ends = np.concatenate([starts[1:], [len(key)]])
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    for start, end in zip(starts.tolist(), ends.tolist()):
        k = (lang_names[lang_idx[start]], split_names[split_idx[start]])
        if k in spans:  # the build script writes each (language, split) block contiguously
            raise XlpromptError(f"The packaged SIB-200 table is not grouped by language and split at {k}; "
                                "rebuild it with scripts/build_sib200_resource.py or reinstall xlprompt.")
        spans[k] = (start, end)
    return _Packaged(table=table, spans=spans, languages=sorted({lang for lang, _ in spans}))


def _load_packaged(split: str, language: str) -> pd.DataFrame:
    pk = _packaged()
    span = pk.spans.get((language, split))
    if span is None:
        raise XlpromptError(unknown_language_message(language, pk.languages, where=" in SIB-200"))
    part = pk.table.slice(span[0], span[1] - span[0])
    return _frame(part.column("index_id").to_numpy(), part.column("text").to_pylist(),
                  part.column("label").to_numpy())


# ---------------------------------------------------------------------------------------------- hub


def _load_hub(split: str, language: str) -> pd.DataFrame:
    """Davlan/sib200 via `datasets`. Errors of any kind (no network, a renamed dataset, a `datasets`
    release that dropped loading scripts) become one XlpromptError pointing at the packaged copy;
    huggingface_hub's request timeouts (HF_HUB_ETAG_TIMEOUT, default 10 s) keep it from hanging."""
    known = _packaged().languages  # the hub has the same 205 configs: fail fast, before any network
    if language not in known:
        raise XlpromptError(unknown_language_message(language, known, where=" in SIB-200"))
    try:
        import datasets
    except ImportError:
        raise XlpromptError("source='hub' needs the optional `datasets` package: run `pip install datasets` "
                            "(or `pip install 'xlprompt[hub]'`), or use source='packaged', which ships the "
                            "same data.") from None
    hub_split = HUB_SPLITS[split]
    try:
        ds = datasets.load_dataset(HUB_DATASET, language, split=hub_split)
    except Exception as exc:  # noqa: BLE001 - any failure here is "the hub copy is unavailable"
        raise XlpromptError(f"Could not load {HUB_DATASET} ({language}, split {hub_split!r}) from the Hugging "
                            f"Face hub: {type(exc).__name__}: {exc}. Check the network and HF_HUB_OFFLINE, or "
                            "use source='packaged', which ships the same data.") from None
    where = f"{HUB_DATASET} ({language}, {hub_split})"
    for column in REQUIRED_COLUMNS:
        if column not in ds.column_names:
            raise XlpromptError(f"{where} has no column {column!r} (found: {', '.join(ds.column_names)}); "
                                "use source='packaged'.")
    categories: Sequence[Any] = ds["category"]
    names = getattr(getattr(ds, "features", {}).get("category"), "names", None)
    if names is not None:  # a ClassLabel column stores ids in the hub's own order: map via names
        categories = [names[int(c)] for c in categories]
    labels = []
    for row, category in enumerate(categories):
        if category not in _LABEL_ID:
            raise XlpromptError(f"{where}, row {row}: category {category!r} is not a SIB-200 label; "
                                f"expected one of: {', '.join(LABELS)}.")
        labels.append(_LABEL_ID[category])
    return _frame([int(i) for i in ds["index_id"]], [str(t) for t in ds["text"]], labels)


# --------------------------------------------------------------------------------------------- API


def load_sib200(split: str, language: str, data_dir: str | Path | None = None,
                source: str = "auto") -> pd.DataFrame:
    """One split of one language: columns index_id (int64), text (str), label (int64 index into
    LABELS), rows in file order. Raises XlpromptError, naming what to fix, for any bad input."""
    split = _check_split(split)
    if not isinstance(language, str):
        raise XlpromptError(f"language must be a code string like 'eng_Latn', not {language!r}.")
    source = _resolve_source(source, data_dir)
    if source == "packaged":
        return _load_packaged(split, language)
    if source == "dir":
        return _load_dir(split, language, data_dir)
    return _load_hub(split, language)


def sib200_languages(data_dir: str | Path | None = None, source: str = "auto") -> list[str]:
    """Sorted language codes a source provides. "hub" reports the packaged list: the hub has the
    same 205 configurations and listing them would need the network."""
    source = _resolve_source(source, data_dir)
    if source == "dir":
        return _language_dirs(find_sib200_dir(data_dir))
    return list(_packaged().languages)
