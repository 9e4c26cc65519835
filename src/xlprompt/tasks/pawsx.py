"""PAWS-X (Yang et al. 2019): paraphrase identification, 2 labels, 7 languages (Tu et al.'s XTREME setup)."""
from ..data.pairs import PAWSX, load_pairs, pair_languages
from .base import Task, register_task

PAWSX_TASK = register_task(Task(
    name="pawsx",
    label_names=PAWSX.labels,
    load=lambda split, language, data_dir=None: load_pairs(PAWSX, split, language, data_dir),
    languages=lambda data_dir=None: pair_languages(PAWSX, data_dir),
    train_language="en",
    pairs=True,
    label_words={"xglm": ["no", "yes"]},  # "are these paraphrases?"
    parallel_split="dev",
    description="PAWS-X paraphrase identification, 2 labels (different, paraphrase), 7 languages, 'NS' "
                "placeholder pairs dropped. Training data: offline, English PAWS-X dev (2,000 pairs; PAWS-Wiki "
                "train is not available offline) cut by a SHA-1 hash of sentence 1 into train (buckets 0-79), "
                "early-stopping dev (80-89) and English test (90-99, English test labels are not public). "
                "Test split: de, zh labelled test; es, fr, ja, ko their dev sets (unused in training). With no "
                "data folder, the hub's PAWS-Wiki train / validation / test",
))
