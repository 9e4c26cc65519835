"""XNLI and PAWS-X sentence pairs: a data folder (XTREME-style TSVs) or the Hugging Face hub.

Every loader returns one frame layout: index_id (line number in the source file, or row in the hub
split), text, text_pair, label (int64 into the task's label list), rows in file order.

Offline there is no English training set (MultiNLI, PAWS-Wiki train), so the English *dev* file is
cut into parts by a fixed hash (`hash_bucket`), the same on every machine and independent of the
seed: XNLI trains on buckets 0-89 and early-stops on 90-99 (English is scored on its real test set);
PAWS-X trains on 0-79, early-stops on 80-89 and scores English on 90-99, because its English test
labels are not public. Hashing XNLI by premise keeps the three hypotheses of a premise on one side,
so the held-out part shares no premise with training.

Source: a data folder (`data_dir`, else `default_data_dir()`) holding `xnli/` or `pawsx/` (or being
that folder) is read; with no data folder at all the hub is used (`datasets`, imported lazily), whose
train split is the full MultiNLI / PAWS-Wiki translation.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import XlpromptError
from ..core.paths import default_data_dir
from .languages import unknown_language_message

SPLITS = ("train", "dev", "test")
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}

# Names for the ISO 639-1 codes these datasets use (language_info knows FLORES-200 codes only).
LANGUAGE_NAMES = {
    "ar": ("Arabic", "Arabic"), "bg": ("Bulgarian", "Cyrillic"), "de": ("German", "Latin"),
    "el": ("Greek", "Greek"), "en": ("English", "Latin"), "es": ("Spanish", "Latin"),
    "fr": ("French", "Latin"), "hi": ("Hindi", "Devanagari"), "ja": ("Japanese", "Japanese"),
    "ko": ("Korean", "Hangul"), "ru": ("Russian", "Cyrillic"), "sw": ("Swahili", "Latin"),
    "th": ("Thai", "Thai"), "tr": ("Turkish", "Latin"), "ur": ("Urdu", "Arabic"),
    "vi": ("Vietnamese", "Latin"), "zh": ("Chinese", "Han (Simplified)"),
}


def language_name(code: str) -> tuple[str, str]:
    """(name, script) for an ISO 639-1 code of XNLI/PAWS-X; ("", "") when unknown."""
    return LANGUAGE_NAMES.get(code, ("", ""))


def hash_bucket(key: str) -> int:
    """A bucket 0-99 from the text alone: stable across runs, machines and Python versions
    (unlike `hash()`), so the offline train/dev cut never depends on a seed."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 100


@dataclass(frozen=True)
class PairDataset:
    name: str              # shown in messages
    folder: str            # subfolder of the data root
    hub_id: str
    labels: tuple[str, ...]
    raw_labels: tuple[str, ...]  # how the files spell each label, in the order of `labels`
    languages: tuple[str, ...]
    # English dev buckets: [0, train_cut) train, [train_cut, dev_cut) dev, [dev_cut, 100) test
    train_cut: int
    dev_cut: int
    drop_ns: bool = False  # PAWS-X: drop untranslated "NS" placeholder pairs, as its authors say


XNLI = PairDataset("XNLI", "xnli", "facebook/xnli", ("entailment", "neutral", "contradiction"),
                   ("entailment", "neutral", "contradiction"),
                   ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
                   train_cut=90, dev_cut=100)
PAWSX = PairDataset("PAWS-X", "pawsx", "google-research-datasets/paws-x", ("different", "paraphrase"),
                    ("0", "1"), ("de", "en", "es", "fr", "ja", "ko", "zh"), train_cut=80, dev_cut=90,
                    drop_ns=True)


def _frame(ids, texts, pairs, labels) -> pd.DataFrame:
    return pd.DataFrame({"index_id": np.asarray(ids, dtype=np.int64), "text": list(texts),
                         "text_pair": list(pairs), "label": np.asarray(labels, dtype=np.int64)})


def read_pair_file(path: Path, ds: PairDataset) -> pd.DataFrame:
    """One XTREME-style file. Plain files (`a<TAB>b<TAB>label`, no header, no quoting: sentences keep
    their `"`) and PAWS-X's test dumps (header `id sentence1 sentence2 label`, CSV quoting) both occur;
    the header tells them apart. Problems name the file and line."""
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XlpromptError(f"{ds.name} file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    label_id = {raw: i for i, raw in enumerate(ds.raw_labels)}
    if content.startswith("id\tsentence1\tsentence2\tlabel"):
        rows = csv.reader(content.splitlines(keepends=True)[1:], delimiter="\t")
        numbered = ((rows.line_num + 1, r[1:]) for r in rows)  # +1: the header line
    else:
        numbered = ((n, line.rstrip("\r").split("\t")) for n, line in enumerate(content.split("\n"), 1))
    ids, texts, pairs, labels = [], [], [], []
    for lineno, fields in numbered:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != 3:
            raise XlpromptError(f"{ds.name} file {path}, line {lineno}: {len(fields)} tab-separated fields, "
                                "expected 3 (text, text pair, label).")
        a, b, raw = fields[0], fields[1], fields[2].strip()
        if raw not in label_id:
            raise XlpromptError(f"{ds.name} file {path}, line {lineno}, column 3: label {raw!r} is not one of "
                                f"{', '.join(ds.raw_labels)}.")
        if ds.drop_ns and "NS" in (a.strip(), b.strip()):
            continue
        ids.append(lineno)
        texts.append(a)
        pairs.append(b)
        labels.append(label_id[raw])
    if not ids:
        raise XlpromptError(f"{ds.name} file {path} has no sentence pairs.")
    return _frame(ids, texts, pairs, labels)


def find_root(ds: PairDataset, data_dir: str | Path | None) -> Path | None:
    """The folder of language folders, or None when no data folder is configured at all (hub)."""
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if explicit else default_data_dir()
    if root is None:
        return None
    for candidate in (root / ds.folder, root):
        if (candidate / "en").is_dir():
            return candidate
    if not explicit:  # a default data folder without this dataset: fall back to the hub
        return None
    raise XlpromptError(f"{root} has no {ds.name} folder ({ds.folder}/<language>/*.tsv, e.g. {ds.folder}/en/); "
                        f"pass the folder holding {ds.folder}/, or no data folder to use the hub.")


def _by_bucket(frame: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    buckets = frame["text"].map(hash_bucket)
    return frame[(buckets >= lo) & (buckets < hi)].reset_index(drop=True)


def _load_dir(ds: PairDataset, split: str, language: str, root: Path) -> pd.DataFrame:
    folder = root / language
    if not folder.is_dir():
        raise XlpromptError(unknown_language_message(language, dir_languages(root), where=f" in {ds.name}"))
    if language == "en":  # the English dev file is cut by hash; see the module docstring
        cuts = {"train": (0, ds.train_cut), "dev": (ds.train_cut, ds.dev_cut), "test": (ds.dev_cut, 100)}
        lo, hi = cuts[split]
        if split == "test" and (folder / "test.tsv").is_file():
            return read_pair_file(folder / "test.tsv", ds)
        if hi > lo and (folder / "dev.tsv").is_file():
            return _by_bucket(read_pair_file(folder / "dev.tsv", ds), lo, hi)
    elif split == "test":  # labelled test where it exists, else the (unused) dev set
        for name in ("test.tsv", "dev.tsv"):
            if (folder / name).is_file():
                return read_pair_file(folder / name, ds)
    elif split == "dev" and (folder / "dev.tsv").is_file():
        return read_pair_file(folder / "dev.tsv", ds)
    raise XlpromptError(f"{ds.name} has no {split} split for {language!r} offline ({folder}); only English "
                        f"trains offline (--train-lang en). Full training sets need the hub: no data folder "
                        f"and `pip install datasets`.")


def _load_hub(ds: PairDataset, split: str, language: str) -> pd.DataFrame:
    if language not in ds.languages:
        raise XlpromptError(unknown_language_message(language, list(ds.languages), where=f" in {ds.name}"))
    try:
        import datasets
    except ImportError:
        raise XlpromptError(f"No {ds.name} data folder was found, and reading {ds.name} from the Hugging Face hub "
                            "needs the optional `datasets` package: `pip install datasets`, or pass "
                            f"--data-dir / XLPROMPT_DATA pointing at a folder with {ds.folder}/.") from None
    try:
        hub = datasets.load_dataset(ds.hub_id, language, split=HUB_SPLITS[split])
    except Exception as exc:  # noqa: BLE001 - offline, renamed, or a `datasets` without scripts
        raise XlpromptError(f"Could not load {ds.hub_id} ({language}, {HUB_SPLITS[split]}) from the Hugging Face "
                            f"hub: {type(exc).__name__}: {exc}. Check the network and HF_HUB_OFFLINE, or use a "
                            f"data folder with {ds.folder}/ (--data-dir).") from None
    cols = list(hub.column_names)
    a, b = ("premise", "hypothesis") if "premise" in cols else ("sentence1", "sentence2")
    if not {a, b, "label"} <= set(cols):
        raise XlpromptError(f"{ds.hub_id} ({language}) has columns {', '.join(cols)}; expected {a}, {b}, label.")
    names = getattr(hub.features.get("label"), "names", None)
    ids, texts, pairs, labels = [], [], [], []
    for i, (x, y, label) in enumerate(zip(hub[a], hub[b], hub["label"])):
        raw = names[label] if names and 0 <= label < len(names) else str(label)
        if raw not in ds.raw_labels and raw not in ds.labels:
            continue  # hub XNLI marks unlabelled pairs with -1
        if ds.drop_ns and "NS" in (x.strip(), y.strip()):
            continue
        ids.append(i)
        texts.append(x)
        pairs.append(y)
        labels.append(ds.raw_labels.index(raw) if raw in ds.raw_labels else ds.labels.index(raw))
    return _frame(ids, texts, pairs, labels)


def dir_languages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.tsv")))


def load_pairs(ds: PairDataset, split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    if split not in SPLITS:
        raise XlpromptError(f"Unknown {ds.name} split {split!r}; use one of: {', '.join(SPLITS)}.")
    root = find_root(ds, data_dir)
    return _load_hub(ds, split, language) if root is None else _load_dir(ds, split, language, root)


def pair_languages(ds: PairDataset, data_dir: str | Path | None = None) -> list[str]:
    root = find_root(ds, data_dir)
    return list(ds.languages) if root is None else dir_languages(root)
