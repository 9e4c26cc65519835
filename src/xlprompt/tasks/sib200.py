"""SIB-200 topic classification (Adelani et al. 2023): 7 labels, 205 parallel languages."""
from ..data.sib200 import LABELS, load_sib200, sib200_languages
from .base import Task, register_task

# PRODUCT.md: Philippy et al.'s label words, in the order of LABELS (science/technology, travel,
# politics, sports, health, entertainment, geography); xglm's list is the default for other decoders.
SIB200_LABEL_WORDS = {
    "xglm": ["science", "travel", "politics", "sports", "health", "entertainment", "earth"],
    "bloom": ["science", "travel", "government", "play", "health", "fun", "earth"],
}

SIB200 = register_task(Task(
    name="sib200",
    label_names=tuple(LABELS),
    load=lambda split, language, data_dir=None: load_sib200(split, language, data_dir=data_dir),
    languages=lambda data_dir=None: sib200_languages(data_dir=data_dir),
    label_words=SIB200_LABEL_WORDS,
    parallel_split="test",
    description="SIB-200 topic classification, 205 languages (train 701 / dev 99 / test 204 each)",
))
