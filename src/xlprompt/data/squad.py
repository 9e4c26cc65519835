"""XQuAD and MLQA: SQuAD-v1.1-format JSON from a data folder, or the Hugging Face hub.

Every loader returns one frame, one row per question: id, title, context, question, answers (list of
answer texts), answer_starts (their character offsets into context), language (ISO 639-1, the code in
the file names), label (always 0). QA has no classes; the constant label lets k-shot sampling treat all
questions as one class, so `shots=n` trains on n questions (early-stopping dev: ceil(n/4)).

Offline there is no SQuAD training set. English XQuAD's 48 articles are ranked by the SHA-1 of their
title (titles are the same English strings in every language file): ranks 0-19 are "train" (493
questions), 20-23 early-stopping "dev" (95) and 24-47 "test" (602). XQuAD is parallel, so every
language's "test" holds the same 24 articles, none of which was trained on; "all" is the whole file.
MLQA (other Wikipedia articles) is scored whole, and its task trains on the same English XQuAD part.

Source: a data folder (`data_dir`, else `default_data_dir()`) holding `xquad/` / `mlqa/dev/` (or being
that folder) is read; with no data folder at all the hub is used (`datasets`, imported lazily): SQuAD
v1.1 train/validation for train/dev, the full XQuAD (all 48 articles) and MLQA dev/test. (XQuAD's
English is a subset of SQuAD validation; the hub's dev only picks the epoch, as in XTREME.)
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..core.errors import XlpromptError
from ..core.paths import default_data_dir
from .languages import suggest

XQUAD_LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
MLQA_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")  # same-language pairs; the folder here lacks ar
TRAIN_ARTICLES, DEV_ARTICLES = 20, 4  # of XQuAD's 48, by title hash; the other 24 are test
COLUMNS = ("id", "title", "context", "question", "answers", "answer_starts", "language", "label")
HUB = {"squad": "rajpurkar/squad", "xquad": "google/xquad", "mlqa": "facebook/mlqa"}


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["label"] = frame["label"].astype("int64")
    return frame


def read_squad_json(path: str | Path, language: str) -> pd.DataFrame:
    """Read one SQuAD-format file, checking that every answer is where its answer_start says."""
    path = Path(path)
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise XlpromptError(f"QA file {path} is missing.") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise XlpromptError(f"QA file {path} is not SQuAD-format JSON with a 'data' list: {exc}.") from None
    rows = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            for qa in paragraph.get("qas", []):
                where = f"QA file {path}, article {a} ({article.get('title', '?')}), paragraph {p}, " \
                        f"question {qa.get('id', '?')}"
                if not isinstance(context, str) or not qa.get("answers") or "question" not in qa:
                    raise XlpromptError(f"{where}: needs a context, a question and at least one answer.")
                texts = [ans["text"] for ans in qa["answers"]]
                starts = [int(ans["answer_start"]) for ans in qa["answers"]]
                for text, start in zip(texts, starts):
                    if context[start:start + len(text)] != text:
                        raise XlpromptError(f"{where}: answer {text!r} is not at character {start} of the "
                                            f"context (found {context[start:start + len(text)]!r}).")
                rows.append({"id": str(qa["id"]), "title": article.get("title", ""), "context": context,
                             "question": qa["question"], "answers": texts, "answer_starts": starts,
                             "language": language, "label": 0})
    if not rows:
        raise XlpromptError(f"QA file {path} holds no questions.")
    return _frame(rows)


@lru_cache(maxsize=32)
def _read_cached(path: str, language: str) -> pd.DataFrame:
    return read_squad_json(path, language)


def article_split(titles) -> dict[str, str]:
    """title -> train | dev | test: the fixed, seed-independent offline cut (see the module docstring)."""
    ranked = sorted(set(titles), key=lambda t: hashlib.sha1(t.encode("utf-8")).hexdigest())
    return {t: "train" if r < TRAIN_ARTICLES else "dev" if r < TRAIN_ARTICLES + DEV_ARTICLES else "test"
            for r, t in enumerate(ranked)}


def find_folder(data_dir: str | Path | None, name: str) -> Path | None:
    """`<root>/<name>` or `root` itself when it holds the files; None only when there is no data folder
    at all (then the hub is used). A given folder without the dataset is an error, not a silent download."""
    explicit = data_dir is not None
    root = Path(data_dir).expanduser() if explicit else default_data_dir()
    if root is None:
        return None
    pattern = "xquad.*.json" if name == "xquad" else "dev-context-*.json"
    for candidate in (root / name, root, root / name / "dev", root / "dev"):
        if candidate.is_dir() and any(candidate.glob(pattern)):
            return candidate
    raise XlpromptError(f"The data folder {root} has no {name} files ({pattern} in {root / name}); pass "
                        f"--data-dir / XLPROMPT_DATA pointing at a folder with {name}/.")


def _check_language(language: str, available, name: str) -> None:
    if language not in available:
        close = suggest(language, list(available))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise XlpromptError(f"Unknown {name} language {language!r}.{hint} Codes are ISO 639-1 as in the file "
                            f"names: {', '.join(available)}.")


def xquad_languages(data_dir: str | Path | None = None) -> list[str]:
    folder = find_folder(data_dir, "xquad")
    if folder is None:
        return list(XQUAD_LANGUAGES)
    return sorted(p.name.split(".")[1] for p in folder.glob("xquad.*.json"))


def mlqa_languages(data_dir: str | Path | None = None) -> list[str]:
    folder = find_folder(data_dir, "mlqa")
    if folder is None:
        return list(MLQA_LANGUAGES)
    found = [p.name.split("-")[2] for p in folder.glob("dev-context-*-question-*.json")]
    return sorted(c for c in found if (folder / f"dev-context-{c}-question-{c}.json").is_file())


def load_xquad(split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    """XQuAD train / dev / test (the article cut) or all; on the hub: SQuAD train, SQuAD validation, XQuAD."""
    if split not in ("train", "dev", "test", "all"):
        raise XlpromptError(f"Unknown XQuAD split {split!r}; use train, dev, test or all.")
    folder = find_folder(data_dir, "xquad")
    if folder is None:
        if split in ("train", "dev"):
            if language != "en":
                raise XlpromptError(f"SQuAD (the hub's training set) is English only, not {language!r}.")
            return load_hub("squad", "train" if split == "train" else "validation", "en")
        _check_language(language, XQUAD_LANGUAGES, "XQuAD")
        return load_hub("xquad", "validation", language)
    _check_language(language, xquad_languages(data_dir), "XQuAD")
    frame = _read_cached(str(folder / f"xquad.{language}.json"), language)
    if split == "all":
        return frame.copy()
    parts = article_split(frame["title"])
    return frame[frame["title"].map(parts) == split].reset_index(drop=True)


def load_mlqa(split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    """MLQA "dev" (the files here) or "test" (hub only); "train" and "selection" are English XQuAD's
    train and dev articles (SQuAD train / validation on the hub), MLQA having no training set."""
    if split in ("train", "selection"):
        return load_xquad("train" if split == "train" else "dev", language, data_dir)
    if split not in ("dev", "test"):
        raise XlpromptError(f"Unknown MLQA split {split!r}; use dev or test (train/selection: XQuAD English).")
    folder = find_folder(data_dir, "mlqa")
    if folder is None:
        _check_language(language, MLQA_LANGUAGES, "MLQA")
        return load_hub("mlqa", "validation" if split == "dev" else "test", language)
    if split == "test":
        raise XlpromptError(f"The MLQA folder {folder} has dev sets only (the test files are not included); "
                            "evaluate split 'dev', or use the hub (no data folder).")
    _check_language(language, mlqa_languages(data_dir), "MLQA")
    return _read_cached(str(folder / f"dev-context-{language}-question-{language}.json"), language).copy()


def load_hub(dataset: str, split: str, language: str) -> pd.DataFrame:
    """SQuAD / XQuAD / MLQA from the Hugging Face hub in the frame layout above."""
    config = {"squad": None, "xquad": f"xquad.{language}", "mlqa": f"mlqa.{language}.{language}"}[dataset]
    try:
        import datasets
    except ImportError:
        raise XlpromptError(f"No data folder with {dataset if dataset != 'squad' else 'xquad'}/ was found, and "
                            "reading it from the Hugging Face hub needs the optional `datasets` package: "
                            "`pip install datasets`, or pass --data-dir / XLPROMPT_DATA.") from None
    try:
        hub = datasets.load_dataset(HUB[dataset], config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, renamed, or a `datasets` without loading scripts
        raise XlpromptError(f"Could not load {HUB[dataset]} ({config or 'default'}, {split}) from the Hugging Face "
                            f"hub: {type(exc).__name__}: {exc}. Check the network and HF_HUB_OFFLINE, or pass "
                            "--data-dir with xquad/ and mlqa/ folders.") from None
    rows = [{"id": str(r["id"]), "title": r.get("title", ""), "context": r["context"], "question": r["question"],
             "answers": list(r["answers"]["text"]), "answer_starts": [int(s) for s in r["answers"]["answer_start"]],
             "language": language, "label": 0} for r in hub if r["answers"]["text"]]
    return _frame(rows)
