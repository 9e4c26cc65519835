"""UD POS (XTREME's UDPOS task, Universal Dependencies v2.5): 17 UPOS tags, accuracy over words.

English (EWT) has train/dev/test; 32 other languages have a test set, the zero-shot evaluation split.
`--shots N` means N training sentences here (and ceil(N/4) dev sentences), not N per tag.
"""
from ..data.conllu import UPOS_TAGS, load_udpos, udpos_languages
from .base import Task, register_task
from .tagging import TokenTagging

UDPOS = register_task(Task(
    name="udpos",
    label_names=UPOS_TAGS,
    load=lambda split, language, data_dir=None: load_udpos(split, language, data_dir),
    languages=lambda data_dir=None: udpos_languages(data_dir),
    train_language="en",
    train_split="train",
    dev_split="dev",
    eval_split="test",
    format=TokenTagging(UPOS_TAGS, metric="accuracy"),
    description="UD v2.5 POS tagging, 17 UPOS tags, word accuracy; English train 12,543 sentences, "
                "test in 33 languages (shots = sentences)",
))
