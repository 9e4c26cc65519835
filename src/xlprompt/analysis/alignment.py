"""Representation alignment (Tu et al. 2022): how close each language's sentence representations are
to English ones, layer by layer, with and without the prompt, for prompt-tuned and fine-tuned runs.

Parallel sentences are rows that share an `index_id` (SIB-200 is FLORES-based, so rows align across
languages). A sentence's representation at a layer is the mean of its text positions' hidden states
(prompt slots and padding excluded, so with/without-prompt vectors pool the same tokens). Inputs are
built exactly as `PromptedClassifier.forward` builds them (its collator, embeddings and prompt method)
and all layers come from `Backbone.hidden_states`, so nothing here re-implements a model path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..collate import encode_texts, length_sorted_batches
from ..device import to_device
from .figures import DPI, plt, styled
from .languages import label as language_label
from .tables import model_label

DEFAULT_LANGUAGES = ("deu_Latn", "fra_Latn", "zho_Hans", "hin_Deva", "swh_Latn", "arb_Arab", "jpn_Jpan")


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
                    batch_size: int = 32) -> np.ndarray:
    """Mean-pooled text representations at every layer: array (layers + 1, sentences, hidden)."""
    model.eval()
    encoded = encode_texts(model.backbone.tokenizer, texts, [0] * len(texts), max_length)
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
    from ..tasks import get_task

    task = get_task(run.config.task)
    frames = parallel_frames(task, [c for c in languages if c != pivot], pivot, n,
                             data_dir=run.config.data_dir)
    tables, last = [], {}
    for cond, with_prompt in conditions(run, plain):
        reps = {code: representations(run.model, f["text"].tolist(), run.config.max_length, with_prompt,
                                      batch_size) for code, f in frames.items()}
        scores = alignment_scores(reps, pivot)
        scores.insert(0, "condition", cond)
        scores.insert(0, "run", model_label(run.config.model) if cond == PRETRAINED else name)
        tables.append(scores)
        last[cond] = {code: rep[-1] for code, rep in reps.items()}
    labels = {code: f["label"].to_numpy() for code, f in frames.items()}
    return pd.concat(tables, ignore_index=True), last, labels, list(task.label_names)


# ------------------------------------------------------------------------------------ figures


@styled
def plot_layers(scores: pd.DataFrame, path: Path) -> Path:
    """Cosine to the pivot and retrieval accuracy per layer, averaged over languages; one line per
    run and condition."""
    mean = scores.groupby(["run", "condition", "layer"])[["cosine", "retrieval"]].mean().reset_index()
    groups = list(mean.groupby(["run", "condition"], sort=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3 + 0.22 * len(groups)))
    for (run, cond), part in groups:
        for ax, col in zip(axes, ("cosine", "retrieval")):
            ax.plot(part["layer"], part[col], marker="o", ms=3, label=f"{run} · {cond}")
    axes[0].set_ylabel("mean cosine to the parallel English sentence")
    axes[1].set_ylabel("retrieval accuracy of the parallel English sentence")
    layers = sorted(mean["layer"].unique())
    for ax in axes:
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(layers if len(layers) <= 13 else layers[::2])
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8)
    n = scores["language"].nunique()
    fig.suptitle(f"Cross-lingual alignment of sentence representations per layer (mean over {n} "
                 f"language{'s' if n != 1 else ''})")
    fig.tight_layout(rect=(0, 0.055 * ((len(groups) + 1) // 2) + 0.02, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@styled
def plot_boundaries(last: dict, labels: dict, label_names: list[str], title: str, path: Path) -> pd.DataFrame:
    """2-D PCA of last-layer representations coloured by label: rows = conditions, columns = languages.
    One PCA per condition, fitted on all its languages, so panels in a row share axes. Returns the
    projected points (the figure's table)."""
    from sklearn.decomposition import PCA

    conds = list(last)
    codes = list(next(iter(last.values())))
    fig, axes = plt.subplots(len(conds), len(codes), figsize=(3.2 * len(codes), 3.0 * len(conds) + 0.6),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    points = []
    for i, cond in enumerate(conds):
        stacked = np.concatenate([last[cond][c] for c in codes])
        proj = PCA(n_components=2, random_state=0).fit(stacked)
        for j, code in enumerate(codes):
            ax = axes[i][j]
            xy = proj.transform(last[cond][code])
            points.append(pd.DataFrame({"condition": cond, "language": code, "sentence": range(len(xy)),
                                        "label": [label_names[k] for k in labels[code]],
                                        "pc1": xy[:, 0], "pc2": xy[:, 1]}))
            for k, name in enumerate(label_names):
                sel = labels[code] == k
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(k % 10), label=name)
            ax.set_title(f"{language_label(code)}\n{cond}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(7, len(names)), fontsize=8, title="label")
    fig.suptitle(title + " — PCA of last-layer sentence representations")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return pd.concat(points, ignore_index=True)
