"""TyDiQA-GoldP (Clark et al. 2020): extractive QA on gold passages in 9 typologically diverse languages."""
from ..data.tydiqa import load_tydiqa, tydiqa_languages
from .base import Task, register_task
from .qa import EXTRACTIVE_QA

TYDIQA_TASK = register_task(Task(
    name="tydiqa",
    label_names=("start", "end"),
    load=lambda split, language, data_dir=None: load_tydiqa(split, language, data_dir),
    languages=lambda data_dir=None: tydiqa_languages(data_dir),
    train_language="en",
    train_split="train",
    dev_split="selection",
    eval_split="dev",
    format=EXTRACTIVE_QA,
    description="TyDiQA-GoldP extractive QA, dev sets of ar bn en fi id ko ru sw te, SQuAD EM/F1 with MLQA's "
                "normalisation (whitespace tokens for the languages MLQA lacks). Hub-loaded "
                "(google-research-datasets/tydiqa, secondary_task; `pip install datasets`) or from --data-dir "
                "tydiqa/ with the GoldP v1.1 JSON files. Training: English GoldP train less one article in ten "
                "(by title hash), which early-stops. --shots n = n training questions",
))
