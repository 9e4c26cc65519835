"""Ensembles: runs on one frozen backbone whose class probabilities are averaged.

Every member reads every text, and all members' rows go through the prompt bank's mixed forward passes
together (`PromptBank.forward`), so an ensemble is one pass over its rows rather than one evaluation per
member. It is not cheaper than its members' passes: a prompt changes the activations of every layer, so
members with prompts share nothing but the tokenization; members without one (head-only probes) read the
same hidden states and run once, their heads applied to the shared rows.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..core.errors import XlpromptError
from ..data.sampling import cap_rows
from ..data.languages import resolve_languages
from ..evaluation.evaluate import mean_metrics
from ..runs.config import source_languages, target_languages
from ..tasks.custom import get_task_for
from .multi import PromptBank
from .served import ServedRun

CHUNK = 64  # texts per call of the bank: members x CHUNK rows, packed by length


class Ensemble:
    """Named members of a prompt bank; `probabilities` is the mean of their class probabilities."""

    def __init__(self, bank: PromptBank, names: list[str]):
        bank.check_members(list(names))
        self.bank, self.names = bank, list(names)

    @classmethod
    def from_runs(cls, run_dirs: list[str | Path], **bank_options) -> "Ensemble":
        """Load the members' model once and every run onto it (`PromptBank.from_runs` options)."""
        names = [f"member{i}" for i in range(len(run_dirs))]
        return cls(PromptBank.from_runs(dict(zip(names, run_dirs)), **bank_options), names)

    def members(self) -> list[ServedRun]:
        try:
            return [self.bank.get(n) for n in self.names]
        except KeyError as exc:
            raise XlpromptError(f"An ensemble member is not loaded: {exc.args[0]}") from None

    @property
    def label_names(self) -> list[str]:
        return list(self.members()[0].label_names)

    def probabilities_of(self, ids_per_member: list[list[list[int]]]) -> np.ndarray:
        """(texts, labels): the members' mean probabilities, from each member's token ids of the texts."""
        members = self.members()
        n = len(ids_per_member[0])
        out = np.zeros((n, len(self.label_names)), dtype=np.float64)
        order = sorted(range(n), key=lambda r: len(ids_per_member[0][r]))  # chunks of like lengths pad little
        for start in range(0, n, CHUNK):
            rows = order[start:start + CHUNK]
            entries = [m for m in members for _ in rows]
            ids = [member_ids[r] for member_ids in ids_per_member for r in rows]
            logits = self.bank.forward(entries, ids)  # every member's rows in the same mixed passes
            for k in range(len(members)):
                out[rows] += _softmax(logits[k * len(rows):(k + 1) * len(rows)])
        return out / len(members)

    def probabilities(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:
        return self.probabilities_of([m.encode(texts, text_pairs) for m in self.members()])

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[str]:
        names = self.label_names
        return [names[i] for i in self.probabilities(texts, text_pairs).argmax(-1)]


def _softmax(rows) -> np.ndarray:
    return torch.softmax(torch.as_tensor(np.stack(rows), dtype=torch.float64), -1).numpy()


def evaluate_ensemble(ensemble: Ensemble, languages="all", *, split: str | None = None, data_dir=None,
                      limit_per_language: int | None = None) -> dict:
    """Per-language metrics of an ensemble, in the shape `evaluate` gives for one run (plus its members)."""
    started = time.perf_counter()
    members = ensemble.members()
    config = members[0].run.config
    task = get_task_for(config)
    if task.head != "classification":
        raise XlpromptError(f"Ensembles average class probabilities: {task.name} is a {task.head} task.")
    data_dir = data_dir if data_dir is not None else config.data_dir
    split = split or task.eval_split
    codes = resolve_languages(languages, task.languages(data_dir))
    per_language, sentences = {}, 0
    for code in codes:
        frame = cap_rows(task.load(split, code, data_dir), limit_per_language)
        encoded = [task.encode(m.tokenizer or m.model.backbone.tokenizer, frame, m.run.config.max_length)
                   for m in members]
        probs = ensemble.probabilities_of([e.token_ids for e in encoded])
        per_language[code] = task.score(frame, encoded[0], np.log(np.clip(probs, 1e-300, None)))
        sentences += len(frame)
    trained = sorted({code for m in members for code in source_languages(m.run.config, task)
                      + target_languages(m.run.config, task)})
    seconds = time.perf_counter() - started
    return {"task": task.name, "split": split, "run": None, "model": config.model,
            "ensemble": [str(m.path) for m in members],
            "train_language": ",".join(source_languages(config, task)), "train_languages": trained,
            "limit_per_language": limit_per_language, "languages": per_language,
            "mean": mean_metrics(per_language, task.metric_names),
            "zero_shot_mean": mean_metrics({k: v for k, v in per_language.items() if k not in trained},
                                           task.metric_names),
            "seconds": seconds, "sentences_per_second": sentences / seconds if seconds else None,
            "speed": {"sentences": sentences, "seconds": {"total": seconds}, "members": len(members),
                      "forward_passes": ensemble.bank.forward_passes}}
