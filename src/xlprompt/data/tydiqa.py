"""TyDiQA-GoldP (Clark et al. 2020), Tu et al.'s sixth task: extractive QA on the gold passage, 9 languages.

Source: the Hugging Face hub (`google-research-datasets/tydiqa`, config `secondary_task`, read with the
optional `datasets` package), or a data folder holding `tydiqa/` with the official GoldP v1.1 files
(`tydiqa-goldp-v1.1-train.json`, `tydiqa-goldp-v1.1-dev.json`: SQuAD-format JSON). Either way the rows
of all languages come mixed, and an id's prefix names its language (`finnish-1234...-0`).

Splits (the XTREME protocol, as in Tu et al.): "dev" is GoldP's dev set, scored per language; "train" is
GoldP's English train set minus a fixed tenth of its articles, ranked by SHA-1 of the title, which is
"selection", the early-stopping set (GoldP has no separate dev for training). Other languages' training
rows are reachable with --train-lang. Frames are those of data/squad.py: one row per question.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..core.errors import XlpromptError
from ..core.paths import default_data_dir
from .squad import _check_language, _frame, read_squad_json

# id prefix -> ISO 639-1 (the 9 GoldP languages; Japanese and Thai have no gold passages)
LANGUAGES = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
             "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te"}
HUB_ID, HUB_CONFIG = "google-research-datasets/tydiqa", "secondary_task"
FILES = {"train": "tydiqa-goldp-v1.1-train.json", "dev": "tydiqa-goldp-v1.1-dev.json"}
SELECTION_SHARE = 10  # one article in ten (by title hash) of the training language is held out for early stopping


def id_language(qid: str) -> str:
    prefix = str(qid).split("-", 1)[0].lower()
    if prefix not in LANGUAGES:
        raise XlpromptError(f"TyDiQA id {qid!r} does not start with one of its languages "
                            f"({', '.join(LANGUAGES)}): is this TyDiQA-GoldP data?")
    return LANGUAGES[prefix]


def tydiqa_languages(data_dir: str | Path | None = None) -> list[str]:
    return sorted(LANGUAGES.values())


def selected(title: str) -> bool:
    """True for the articles held out of "train" as "selection" (a fixed, seed-independent cut)."""
    return int(hashlib.sha1(title.encode("utf-8")).hexdigest(), 16) % SELECTION_SHARE == 0


def load_tydiqa(split: str, language: str, data_dir: str | Path | None = None) -> pd.DataFrame:
    if split not in ("train", "selection", "dev"):
        raise XlpromptError(f"Unknown TyDiQA split {split!r}; use train, selection (early stopping) or dev.")
    _check_language(language, tydiqa_languages(), "TyDiQA-GoldP")
    frame = _split_frame("dev" if split == "dev" else "train", _folder(data_dir))
    frame = frame[frame["language"] == language]
    if split != "dev":
        held_out = frame["title"].map(selected)
        frame = frame[held_out if split == "selection" else ~held_out]
    if frame.empty:
        raise XlpromptError(f"TyDiQA-GoldP {split} has no {language} questions.")
    return frame.reset_index(drop=True)


def _folder(data_dir: str | Path | None) -> str | None:
    """`<root>/tydiqa` (or root itself) when it holds the GoldP files; None: read the hub."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if root is None:
        return None
    for candidate in (root / "tydiqa", root):
        if (candidate / FILES["dev"]).is_file():
            return str(candidate)
    return None


@lru_cache(maxsize=4)
def _split_frame(split: str, folder: str | None) -> pd.DataFrame:
    if folder is not None:
        frame = read_squad_json(Path(folder) / FILES[split], "")
        frame["language"] = frame["id"].map(id_language)
        return frame
    return hub_frame(_hub_rows(split))


def hub_frame(rows) -> pd.DataFrame:
    """The hub's secondary_task rows (id, title, context, question, answers{text, answer_start}) as a frame."""
    out = []
    for r in rows:
        texts = list(r["answers"]["text"])
        if not texts:
            continue
        starts = [int(s) for s in r["answers"]["answer_start"]]
        for text, start in zip(texts, starts):
            if r["context"][start:start + len(text)] != text:
                raise XlpromptError(f"TyDiQA question {r['id']}: answer {text!r} is not at character {start}.")
        out.append({"id": str(r["id"]), "title": r.get("title", ""), "context": r["context"],
                    "question": r["question"], "answers": texts, "answer_starts": starts,
                    "language": id_language(r["id"]), "label": 0})
    return _frame(out)


def _hub_rows(split: str):
    try:
        import datasets
    except ImportError:
        raise XlpromptError("TyDiQA-GoldP is read from the Hugging Face hub, which needs the optional `datasets` "
                            "package: `pip install 'xlprompt[hub]'`, or pass --data-dir with tydiqa/ holding "
                            f"{FILES['train']} and {FILES['dev']}.") from None
    hub_split = "validation" if split == "dev" else "train"
    try:
        return datasets.load_dataset(HUB_ID, HUB_CONFIG, split=hub_split)
    except Exception as exc:  # noqa: BLE001 - offline, renamed, or an old `datasets`
        raise XlpromptError(f"Could not load {HUB_ID} ({HUB_CONFIG}, {hub_split}) from the Hugging Face hub: "
                            f"{type(exc).__name__}: {exc}. Check the network and HF_HUB_OFFLINE, or pass "
                            "--data-dir with tydiqa/ holding the GoldP v1.1 JSON files.") from None
