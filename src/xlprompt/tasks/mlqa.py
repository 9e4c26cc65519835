"""MLQA (Lewis et al. 2020): extractive QA on Wikipedia, same-language context/question pairs."""
from ..data.squad import load_mlqa, mlqa_languages
from .base import Task, register_task
from .qa import EXTRACTIVE_QA

MLQA_TASK = register_task(Task(
    name="mlqa",
    label_names=("start", "end"),
    load=lambda split, language, data_dir=None: load_mlqa(split, language, data_dir),
    languages=lambda data_dir=None: mlqa_languages(data_dir),
    train_language="en",
    # MLQA has no training set: train and early-stop on the English XQuAD parts (SQuAD on the hub),
    # score MLQA's dev sets (the only MLQA files in the data folder; "test" needs the hub)
    train_split="train",
    dev_split="selection",
    eval_split="dev",
    format=EXTRACTIVE_QA,
    description="MLQA extractive QA, dev sets of en de es hi vi zh (ar, test: hub only), SQuAD EM/F1 with "
                "MLQA's normalisation. Training data: offline, the same 20 English XQuAD articles as the xquad "
                "task (493 questions; early stopping on its 4 dev articles), MLQA having no training set; with "
                "no data folder, SQuAD v1.1 from the hub. --shots n = n training questions",
))
