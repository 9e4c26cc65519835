"""Representation alignment (Tu et al. 2022): how close each language's sentence representations are to
the training language's, layer by layer, with and without the prompt, for prompt-tuned and fine-tuned runs.

Parallel examples are rows that share an `index_id` in a task's `parallel_split` (SIB-200 is FLORES-based;
XNLI's test and PAWS-X's dev files are translations line by line), so rows align across languages. An
example's representation at a layer is the mean of its text positions' hidden states (prompt slots and
padding excluded, so with/without-prompt vectors pool the same tokens; a pair pools both texts). Inputs
are built exactly as `PromptedClassifier.forward` builds them (its collator, embeddings and prompt method)
and all layers come from `Backbone.hidden_states`, so nothing here re-implements a model path.

`measure_run` is what a sweep records in a run folder (`alignment.json`) while the run's weights are
there; the report (analysis/) reads it and draws the figures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.collate import encode_texts, length_sorted_batches
from ..execution.device import to_device
from ..runs.config import source_languages
from ..tasks import get_task

DEFAULT_LANGUAGES = ("deu_Latn", "fra_Latn", "zho_Hans", "hin_Deva", "swh_Latn", "arb_Arab", "jpn_Jpan")
LANGUAGES = 20  # target languages measured per run (DEFAULT_LANGUAGES first, then sorted codes)
FILE = "alignment.json"


def model_name(name: str) -> str:
    """Short model name (as the report's tables give it): the last path component of a hub id or folder."""
    return Path(str(name).rstrip("/")).name or str(name)


def pick_languages(available: list[str], k: int) -> list[str]:
    """Up to `k` of `available`: DEFAULT_LANGUAGES first, then the others in the order given."""
    preferred = [c for c in DEFAULT_LANGUAGES if c in available]
    return (preferred + [c for c in available if c not in preferred])[:k]


def parallel_frames(task, languages, pivot: str, n: int, split: str | None = None, data_dir=None) -> dict:
    """{language: frame} restricted to the first `n` index_ids present in every language, same order."""
    split = split or task.eval_split
    frames = {code: task.load(split, code, data_dir) for code in dict.fromkeys([pivot, *languages])}
    common = set(frames[pivot]["index_id"])
    for frame in frames.values():
        common &= set(frame["index_id"])
    ids = sorted(common)[:n]
    return {code: f.set_index("index_id").loc[ids].reset_index() for code, f in frames.items()}


@torch.inference_mode()
def representations(model, texts: list[str], max_length: int = 128, with_prompt: bool = True,
                    batch_size: int = 32, text_pairs: list[str] | None = None) -> np.ndarray:
    """Mean-pooled text representations at every layer: array (layers + 1, sentences, hidden). With
    `text_pairs`, each example is the pair as the run reads it (both texts' positions pooled)."""
    model.eval()
    encoded = encode_texts(model.backbone.tokenizer, texts, [0] * len(texts), max_length, text_pairs)
    collate = model.collator()
    use_method = with_prompt and model.method is not None
    if not use_method:
        collate.num_slots = 0  # same layout rules without slots: the backbone as it is without the prompt
    out = None
    # length-sorted batches, as evaluation does: little padding; rows are put back in order below
    for rows in length_sorted_batches([n + collate.num_slots + 1 for n in encoded.lengths()], batch_size):
        batch = to_device(collate(encoded, rows), model.backbone.device)
        embeds = model.backbone.embed(batch.input_ids)
        mask, past = batch.attention_mask, None
        if use_method:
            prompted = model.method(embeds, batch.attention_mask, batch.prompt_mask)
            embeds, mask, past = prompted.embeds, prompted.attention_mask, prompted.past_key_values
        hidden = model.backbone.hidden_states(embeds, mask, past_key_values=past)
        text = (batch.attention_mask.bool() & ~batch.prompt_mask).unsqueeze(-1).float()
        width = text.shape[1]
        pooled = [(h[:, -width:].float() * text).sum(1) / text.sum(1).clamp_min(1.0) for h in hidden]
        pooled = torch.stack(pooled).cpu().numpy()
        if out is None:
            out = np.zeros((pooled.shape[0], len(encoded), pooled.shape[2]), dtype=np.float32)
        out[:, rows] = pooled
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def alignment_scores(reps: dict, pivot: str) -> pd.DataFrame:
    """Per language (not the pivot) and layer: mean cosine to the parallel pivot sentence, and
    retrieval accuracy (the nearest pivot sentence by cosine is the parallel one)."""
    base = _normalize(reps[pivot])
    rows = []
    for code, rep in reps.items():
        if code == pivot:
            continue
        unit = _normalize(rep)
        for layer in range(unit.shape[0]):
            sims = unit[layer] @ base[layer].T  # (n, n): sentence i of `code` vs every pivot sentence
            rows.append({"language": code, "layer": layer, "cosine": float(np.mean(np.diag(sims))),
                         "retrieval": float(np.mean(sims.argmax(1) == np.arange(len(sims))))})
    return pd.DataFrame(rows)


PRETRAINED = "pretrained model, no prompt"


def conditions(run, plain: bool = True) -> list[tuple[str, bool]]:
    """(name, with_prompt) pairs that make sense for a run. Without its prompt a frozen run is the
    pretrained model, the same for every frozen run of a model: `plain=False` leaves it out."""
    if run.model.method is None:
        return [("fine-tuned model" if not run.config.freeze_model else PRETRAINED, False)]
    if run.config.freeze_model:
        return [("with prompt", True)] + ([(PRETRAINED, False)] if plain else [])
    return [("with prompt", True), ("without prompt (trained model)", False)]


def run_alignment(run, name: str, languages, pivot: str, n: int = 100, batch_size: int = 32, plain: bool = True):
    """Scores table and last-layer representations {condition: {language: (n, d)}} plus labels."""
    task = get_task(run.config.task)
    frames = parallel_frames(task, [c for c in languages if c != pivot], pivot, n, split=task.parallel_split,
                             data_dir=run.config.data_dir)
    tables, last = [], {}
    for cond, with_prompt in conditions(run, plain):
        reps = {code: representations(run.model, f["text"].tolist(), run.config.max_length, with_prompt,
                                      batch_size, f["text_pair"].tolist() if "text_pair" in f else None)
                for code, f in frames.items()}
        scores = alignment_scores(reps, pivot)
        scores.insert(0, "condition", cond)
        scores.insert(0, "run", model_name(run.config.model) if cond == PRETRAINED else name)
        tables.append(scores)
        last[cond] = {code: rep[-1] for code, rep in reps.items()}
    labels = {code: f["label"].to_numpy() for code, f in frames.items()}
    return pd.concat(tables, ignore_index=True), last, labels, list(task.label_names)


def measure_run(run, languages: list[str] | None = None, sentences: int = 100) -> dict:
    """What `alignment.json` holds for a loaded run: every layer's retrieval of the parallel training-
    language example and mean cosine to it, per language, in the run's own condition (with its prompt; a
    fine-tuned model as trained), on `sentences` parallel examples. `languages`: None = up to LANGUAGES
    of the task's others. Raises ValueError for a task without parallel evaluation data."""
    task = get_task(run.config.task)
    if task.parallel_split is None:
        raise ValueError(f"{task.name} has no parallel evaluation data: alignment is not measured for it.")
    pivot = source_languages(run.config, task)[0]  # the first source
    available = [c for c in task.languages(run.config.data_dir) if c != pivot]
    codes = [c for c in (languages or pick_languages(sorted(available), LANGUAGES)) if c in available]
    scores, _, _, _ = run_alignment(run, "run", codes, pivot, sentences, plain=False)
    condition = "with prompt" if run.model.method is not None else scores["condition"].iloc[0]
    scores = scores[scores["condition"] == condition]
    last = scores[scores["layer"] == scores["layer"].max()]
    return {"pivot": pivot, "sentences": sentences, "languages": codes, "condition": condition,
            "layer": int(scores["layer"].max()), "split": task.parallel_split,
            "rows": last[["language", "retrieval", "cosine"]].to_dict("records"),
            "layers": scores[["language", "layer", "retrieval", "cosine"]].to_dict("records")}
