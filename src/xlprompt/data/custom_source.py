"""Reading own data: tables (TSV, CSV, JSONL) in the layouts of `custom.py`, and Hugging Face datasets,
as rows `(line, {column: value})` per (split, language). Knows columns, not what they mean."""
from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..core.errors import XlpromptError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
FORMATS = ("tsv", "csv", "jsonl")
Row = tuple[int, dict]  # (line number in the file, or row number in a hub split; the row's values)
Units = dict[tuple[str, str], tuple[str, Callable[[], list[Row]]]]  # (split, language) -> (where, rows loader)


def _format(path: Path, spec) -> str:
    fmt = spec.format or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise XlpromptError(f"{path}: unknown file type {path.suffix!r}; use .tsv, .csv or .jsonl (or set format).")
    return fmt


@lru_cache(maxsize=16)
def _read_cached(path: str, fmt: str, stamp: tuple) -> tuple[tuple[str, ...], list[Row]]:
    """(columns, rows) of one file; cached on the file's mtime and size, so a single table serving many
    languages and splits is parsed once."""
    try:
        content = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XlpromptError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if not content.strip():
        raise XlpromptError(f"{path} is empty; expected a header line and one example per line.")
    if fmt == "jsonl":
        rows, keys = [], []
        for line, text in enumerate(content.split("\n"), 1):
            if not text.strip():
                continue
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise XlpromptError(f"{path}, line {line}, character {exc.colno}: not valid JSON "
                                    f"({exc.msg}).") from None
            if not isinstance(values, dict):
                raise XlpromptError(f"{path}, line {line}: expected a JSON object {{\"column\": value, ...}}, "
                                    f"got {type(values).__name__}.")
            keys.extend(k for k in values if k not in keys)
            rows.append((line, values))
        return tuple(keys), rows
    if fmt == "tsv":  # split on "\n" only: str.splitlines would break inside sentences on U+2028
        lines = [(n, t.rstrip("\r").split("\t")) for n, t in enumerate(content.split("\n"), 1)]
    else:
        reader = csv.reader(io.StringIO(content, newline=""))  # quoted fields may span lines
        lines = [(reader.line_num, fields) for fields in reader]
    lines = [(n, fields) for n, fields in lines if any(f.strip() for f in fields)]
    if not lines:  # e.g. only separators or empty quoted fields
        raise XlpromptError(f"{path} has no header line, only empty fields; expected a header line and one "
                            "example per line.")
    header = tuple(h.strip() for h in lines[0][1])
    rows = []
    for line, fields in lines[1:]:
        if len(fields) != len(header):
            sep = "tab-separated" if fmt == "tsv" else "comma-separated"
            raise XlpromptError(f"{path}, line {line}: {len(fields)} {sep} fields where the header has "
                                f"{len(header)} ({', '.join(header)}).")
        rows.append((line, dict(zip(header, fields))))
    return header, rows


def read_table(path: Path, spec) -> tuple[tuple[str, ...], list[Row]]:
    stat = path.stat()
    return _read_cached(str(path), _format(path, spec), (stat.st_mtime_ns, stat.st_size))


def _split_files(folder: Path) -> dict[str, Path]:
    found = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        split = SPLIT_ALIASES.get(p.stem.lower())
        if split and p.is_file() and p.suffix.lstrip(".").lower() in FORMATS:
            if split in found:
                raise XlpromptError(f"{folder} has two {split} files: {found[split].name} and {p.name}.")
            found[split] = p
    return found


class Source:
    """The rows of every (split, language) a path provides. `spec` gives format, language_column and
    split_column; `columns` are the ones every row must have."""

    def __init__(self, spec, path: str, columns: list[str]):
        self.spec = spec
        self.path = path
        self.root = Path(path).expanduser()
        self.columns = columns

    def layout(self) -> str:
        if self.path.startswith("hf:"):
            return "hub"
        if self.root.is_file():
            return "file"
        if not self.root.is_dir():
            raise XlpromptError(f"Own data {self.root} does not exist; pass a folder, a .tsv/.csv/.jsonl file, "
                                "or hf:DATASET.")
        if _split_files(self.root):
            return "split_files"
        if any(_split_files(p) for p in self.root.iterdir() if p.is_dir()):
            return "language_folders"
        raise XlpromptError(f"{self.root} holds no data: expected <language>/train.tsv (or .csv/.jsonl), "
                            "train.tsv with a language column, or a single file.")

    def _table(self, path: Path) -> list[Row]:
        """Rows of one file after checking its header holds every needed column."""
        header, rows = read_table(path, self.spec)
        needed = self.columns + [c for c in (self.spec.language_column, self.spec.split_column) if c]
        fmt = _format(path, self.spec)
        for column in needed:
            if fmt != "jsonl" and column not in header:
                raise XlpromptError(f"{path}, line 1, column {column!r}: no such column (found: {', '.join(header)}).")
            for line, values in rows if fmt == "jsonl" else ():
                if column not in values:
                    raise XlpromptError(f"{path}, line {line}, column {column!r}: missing "
                                        f"(found: {', '.join(values)}).")
        return rows

    def _column(self, name: str, what: str) -> str:
        column = getattr(self.spec, name)
        if not column:
            raise XlpromptError(f"{self.root} needs a {what} column: set {name} (CLI: --{name.replace('_', '-')}).")
        return column

    def _language_of(self, values: dict) -> str:
        return str(values[self._column("language_column", "language")]).strip()

    def units(self) -> Units:
        """(split, language) -> (where, rows loader). Language folders are listed without parsing, so a
        malformed file of one language never blocks another; tables with a language column are parsed
        once to learn their languages."""
        layout = self.layout()
        if layout == "hub":
            return hub_units(self.spec, self.path[3:])
        if layout == "language_folders":
            return {(split, lang.name): (str(p), lambda p=p: self._table(p)) for lang in sorted(self.root.iterdir())
                    if lang.is_dir() for split, p in _split_files(lang).items()}
        if layout == "split_files":
            files = [(split, p, self._table(p)) for split, p in _split_files(self.root).items()]
        else:
            split_col = self._column("split_column", "split")
            rows = self._table(self.root)
            for line, values in rows:
                raw = str(values[split_col]).strip().lower()
                if raw not in SPLIT_ALIASES:
                    raise XlpromptError(f"{self.root}, line {line}, column {split_col!r}: split {raw!r} is not one "
                                        "of train, dev (validation), test.")
            files = [(split, self.root, [r for r in rows if SPLIT_ALIASES[str(r[1][split_col]).strip().lower()]
                                         == split]) for split in SPLITS]
        return {(split, lang): (str(path), lambda part=part: part)
                for split, path, rows in files for lang, part in _by_language(rows, self._language_of).items()}


def _by_language(rows: list[Row], language_of) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(language_of(row[1]), []).append(row)
    return out


def hub_units(spec, name: str) -> Units:
    """Configurations as languages are loaded only when asked for; a language column needs every split."""
    try:
        import datasets
    except ImportError:
        raise XlpromptError(f"Reading hf:{name} needs the optional `datasets` package: `pip install datasets`, "
                            "or export the data to .tsv/.csv/.jsonl files.") from None

    def guarded(fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated dataset...
            raise XlpromptError(f"Could not load hf:{name} from the Hugging Face hub: {type(exc).__name__}: "
                                f"{exc}. Check the name, the network and HF_HUB_OFFLINE, or use local files.") from None

    def rows_of(config, split) -> list[Row]:
        ds = guarded(lambda: datasets.load_dataset(name, config, split=HUB_SPLITS[split]))
        names = {c: getattr(f, "names", None) for c, f in ds.features.items()}
        return [(i, {c: names[c][v] if names.get(c) and isinstance(v, int) and v >= 0 else v
                     for c, v in row.items()}) for i, row in enumerate(ds)]  # ClassLabel ids -> names

    splits = {hub: split for split, hub in HUB_SPLITS.items()}
    if spec.language_column:
        units = {}
        for hub_split in guarded(lambda: datasets.get_dataset_split_names(name)):
            if hub_split in splits:
                rows = rows_of(None, splits[hub_split])
                for lang, part in _by_language(rows, lambda v: str(v[spec.language_column]).strip()).items():
                    units[(splits[hub_split], lang)] = (f"hf:{name} ({hub_split})", lambda part=part: part)
        return units
    return {(splits[hub_split], config): (f"hf:{name} ({config}, {hub_split})",
                                          lambda c=config, s=splits[hub_split]: rows_of(c, s))
            for config in guarded(lambda: datasets.get_dataset_config_names(name))
            for hub_split in guarded(lambda c=config: datasets.get_dataset_split_names(name, c))
            if hub_split in splits}
