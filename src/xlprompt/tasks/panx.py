"""PAN-X / WikiANN NER (XTREME): IOB2 PER/ORG/LOC, entity-level F1 (seqeval) over words.

English has train (20k) and dev (10k); the other languages have only labelled dev sets, so `dev` is
the evaluation split for every language, English included. Training uses English dev for epoch
selection, so the English score is measured on data the dev loss saw (a subset of ceil(N/4) sentences
with `--shots N`); the zero-shot languages are untouched. `--shots N` means N training sentences.
"""
from ..data.panx import PANX_TAGS, load_panx, panx_languages
from .base import Task, register_task
from .tagging import TokenTagging

PANX = register_task(Task(
    name="panx",
    label_names=PANX_TAGS,
    load=lambda split, language, data_dir=None: load_panx(split, language, data_dir),
    languages=lambda data_dir=None: panx_languages(data_dir),
    train_language="en",
    train_split="train",
    dev_split="dev",
    eval_split="dev",
    format=TokenTagging(PANX_TAGS, metric="span_f1"),
    description="PAN-X (WikiANN) NER, IOB2 PER/ORG/LOC, entity F1 (seqeval); English train 20k, "
                "labelled dev sets evaluated in every language (shots = sentences)",
))
