"""XNLI (Conneau et al. 2018): premise/hypothesis pairs, 3 labels, 15 languages (Tu et al.'s XTREME setup)."""
from ..data.pairs import XNLI, load_pairs, pair_languages
from .base import Task, register_task

XNLI_TASK = register_task(Task(
    name="xnli",
    label_names=XNLI.labels,
    load=lambda split, language, data_dir=None: load_pairs(XNLI, split, language, data_dir),
    languages=lambda data_dir=None: pair_languages(XNLI, data_dir),
    train_language="en",
    pairs=True,
    # the pair is read as "premise? hypothesis" -> yes / maybe / no, the usual NLI verbalizer
    label_words={"xglm": ["yes", "maybe", "no"]},
    parallel_split="test",
    description="XNLI natural language inference, 3 labels, 15 languages, scored on test (5,010 pairs each). "
                "Training data: offline, English XNLI dev (2,490 pairs; MultiNLI is not available offline) cut "
                "by a SHA-1 hash of the premise into train (buckets 0-89, ~90%) and early-stopping dev (90-99); "
                "with no data folder, the hub's full MultiNLI train and XNLI validation",
))
