"""Zero-shot evaluation over many languages: batched across languages, length-sorted, inference mode."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import io
from .collate import Encoded, encode_texts, length_sorted_batches
from .data.languages import resolve_languages
from .models.heads import head_loss
from .progress import progress_bar
from .tasks.custom import get_task_for


@torch.inference_mode()
def predict_outputs(model, encoded: Encoded, batch_size: int = 64, max_tokens: int = 16384,
                    progress: bool = False, description: str = "evaluating", with_loss: bool = False):
    """The model's output for every encoded row, in row order: (labels,) for sentence classification,
    (tokens, labels) for tagging, (2, tokens) for spans; padding beyond the row's tokens is cut.
    With `with_loss`, also the mean training loss over all targets: (outputs, loss)."""
    model.eval()
    collate = model.collator()
    lengths = [n + model.num_slots + 1 for n in encoded.lengths()]
    out: list = [None] * len(encoded)
    loss_sum, targets = 0.0, 0
    with progress_bar(progress) as bar:
        tid = bar.add_task(description, total=len(encoded), info="")
        for rows in length_sorted_batches(lengths, batch_size, max_tokens):
            batch = collate(encoded, rows)
            logits = model(batch)
            if with_loss:
                loss_sum += head_loss(logits, batch.labels, reduction="sum").item()
                targets += int((batch.labels != -100).sum())
            result = logits.float().numpy()
            for r, row in enumerate(rows):
                out[row] = trim_output(result[r], len(encoded.token_ids[row]), result.ndim)
            bar.update(tid, advance=len(rows))
    return (out, loss_sum / max(targets, 1)) if with_loss else out


def trim_output(row: np.ndarray, n_tokens: int, batch_ndim: int) -> np.ndarray:
    if batch_ndim == 2:       # (labels,)
        return row
    if row.shape[0] == 2:     # spans: (2, tokens)
        return row[:, :n_tokens]
    return row[:n_tokens]     # tags: (tokens, labels)


def predict_encoded(model, encoded: Encoded, batch_size: int = 64, **kwargs) -> np.ndarray:
    """Class logits (rows x labels) for sentence classification."""
    outputs = predict_outputs(model, encoded, batch_size, **kwargs)
    return np.stack(outputs)[:, :model.num_labels] if outputs else np.zeros((0, model.num_labels), np.float32)


def predict(model, texts, max_length: int = 128, text_pairs=None, batch_size: int = 64) -> np.ndarray:
    """Predicted label indices for raw texts."""
    enc = encode_texts(model.backbone.tokenizer, list(texts), [0] * len(texts), max_length, text_pairs)
    return predict_encoded(model, enc, batch_size).argmax(-1)


def evaluate(run, languages="all", *, split: str | None = None, data_dir: str | None = None,
             batch_size: int | None = None, progress: bool = True) -> dict:
    """Per-language metrics of a run: `{"languages": {code: {"accuracy", "macro_f1", "n"}}, ...}`.

    All languages' rows are pooled and length-sorted together, so batches are full and padding small.
    """
    config = run.config
    task = get_task_for(config)
    data_dir = data_dir if data_dir is not None else config.data_dir
    split = split or task.eval_split
    codes = resolve_languages(languages, task.languages(data_dir))
    tokenizer = run.model.backbone.tokenizer
    frames, encoded = {}, {}
    for code in codes:
        frames[code] = task.load(split, code, data_dir)
        encoded[code] = task.encode(tokenizer, frames[code], config.max_length)
    pooled = Encoded.concat([encoded[c] for c in codes])
    started = time.perf_counter()
    outputs = predict_outputs(run.model, pooled, batch_size or config.eval_batch_size, progress=progress,
                              description=f"evaluating {len(codes)} languages")
    seconds = time.perf_counter() - started
    per_language, start = {}, 0
    for code in codes:
        n = len(encoded[code])
        per_language[code] = task.score(frames[code], encoded[code], outputs[start:start + n])
        start += n
    return {
        "task": task.name,
        "split": split,
        "run": str(run.path) if run.path else None,
        "model": config.model,
        "train_language": config.train_language or task.train_language,
        "notes": task.description,  # e.g. which data trained the run where the usual train set is missing
        "languages": per_language,
        "mean": mean_metrics(per_language, task.metric_names),
        "seconds": seconds,
        "sentences_per_second": len(pooled) / seconds if seconds else None,
    }


def mean_metrics(per_language: dict, names) -> dict:
    out = {}
    for name in names:
        vals = [m[name] for m in per_language.values() if not math.isnan(m[name])]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    out["languages"] = len(per_language)
    return out


def results_frame(results: dict):
    import pandas as pd

    from .data.languages import language_info

    rows = []
    for code, m in results["languages"].items():
        try:
            name = language_info(code).name
        except Exception:  # codes outside SIB-200's list (own data) have no metadata
            name = ""
        rows.append({"language": code, "name": name, **m})
    return pd.DataFrame(rows)


def write_results(results: dict, out_json: str | Path, csv: bool = True) -> None:
    out_json = Path(out_json)
    io.write_json(out_json, results)
    if csv:
        with io.atomic_path(out_json.with_suffix(".csv")) as tmp:
            results_frame(results).to_csv(tmp, index=False)


def results_table(results: dict, sort_by: str = "accuracy", title: str | None = None):
    """A rich table, sorted descending by `sort_by` (or by language code), with the mean at the bottom."""
    from rich.table import Table

    frame = results_frame(results)
    if sort_by == "language":
        frame = frame.sort_values("language")
    else:
        frame = frame.sort_values(sort_by, ascending=False)
    metric_cols = [c for c in frame.columns if c not in ("language", "name", "n")]
    table = Table(title=title or f"{results['task']} · {results['split']} · {len(frame)} languages")
    table.add_column("language")
    table.add_column("name")
    for c in metric_cols:
        table.add_column(c, justify="right")
    table.add_column("n", justify="right")
    for _, row in frame.iterrows():
        table.add_row(row["language"], row["name"], *[f"{row[c]:.3f}" for c in metric_cols], str(row["n"]))
    mean = results["mean"]
    table.add_section()
    table.add_row("mean", f"{mean['languages']} languages",
                  *[f"{mean.get(c, float('nan')):.3f}" for c in metric_cols], str(int(frame["n"].sum())))
    return table
