"""XQuAD (Artetxe et al. 2020): extractive QA, 12 parallel languages x 1,190 questions (Tu et al.'s XTREME QA)."""
from ..data.squad import load_xquad, xquad_languages
from .base import Task, register_task
from .qa import EXTRACTIVE_QA

XQUAD_TASK = register_task(Task(
    name="xquad",
    label_names=("start", "end"),  # the span head's two score rows; QA has no classes
    load=lambda split, language, data_dir=None: load_xquad(split, language, data_dir),
    languages=lambda data_dir=None: xquad_languages(data_dir),
    train_language="en",
    format=EXTRACTIVE_QA,
    description="XQuAD extractive QA, 12 languages, SQuAD EM/F1 with MLQA's language-aware normalisation; "
                "windows of 384 tokens, stride 128. Training data: offline there is no SQuAD, so English XQuAD's "
                "48 articles are ranked by SHA-1 of the title: the first 20 train (493 questions), the next 4 "
                "early-stop (dev, 95), and the other 24 articles are the test split in every language (602 "
                "questions each; XQuAD is parallel, so no test article was trained on). With no data folder, "
                "the hub's SQuAD v1.1 train/validation and the full XQuAD. --shots n = n training questions",
))
