"""Zero-shot evaluation over many languages: batched across languages, length-sorted, inference mode.

Speed (see benchmarks/README.md for the measurements behind each default):
- batches: all languages' rows pooled, sorted by length, cut when a batch's padded size rows x width
  would pass `max_tokens` (a token budget, so short sentences make wide batches and long ones narrow
  ones); `batch_size` adds a cap on rows (`batch_size=64, max_tokens=None` is the old fixed policy);
- `token_cache`: each dataset is tokenized once per tokenizer/task/max_length/data and reused (token_cache.py);
- `threads`: "auto" measures 1 vs more torch threads on real batches (inference.py);
- `precision`, `engine`, `dtype`, `device`: resolved once into an execution plan (execution/plan.py), which
  picks on CPU, by measurement on the machine, the fastest recipe that passed the 205-language accuracy
  guard (fp32, bf16 weights, int8-checked); int8-checked only for 2,000+ rows of sentence classification.
"""
from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..core import io
from ..data.collate import Encoded, encode_texts, length_sorted_batches
from ..data.languages import resolve_languages
from ..data.sampling import cap_rows
from ..engine.base import Work
from ..execution.device import CPU_MAX_TOKENS, device_info, reset_peak_memory, to_device
from ..core.errors import XlpromptError
from .features import feature_cache_for, head_outputs, uses_features
from ..models.heads import head_loss
from ..core.progress import progress_bar
from ..runs.config import source_languages, target_languages
from ..tasks import get_task
from ..tasks.custom import get_task_for

# benchmarks/README.md: budgets of 1024-4096 padded tokens ran within 5% of each other, 8192/16384 10-13%
# slower than 2048; with few rows (a handful of languages) a smaller budget also pads less
DEFAULT_MAX_TOKENS = CPU_MAX_TOKENS  # the CPU budget (device.py), kept under its old name for callers


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_outputs(model, encoded: Encoded, batch_size: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                    progress: bool = False, description: str = "evaluating", with_loss: bool = False,
                    tuner=None, stats: dict | None = None):
    """The model's output for every encoded row, in row order: (labels,) for sentence classification,
    (tokens, labels) for tagging, (2, tokens) for spans; padding beyond the row's tokens is cut.
    With `with_loss`, also the mean training loss over all targets: (outputs, loss).
    `tuner` (inference.ThreadTuner) picks threads per batch; `stats` receives timings and token counts."""
    if batch_size is None and max_tokens is None:
        raise ValueError("give batch_size, max_tokens or both")
    model.eval()
    device = _device(model)
    collate = model.collator()
    lengths = [n + model.num_slots + 1 for n in encoded.lengths()]
    out: list = [None] * len(encoded)
    loss_sum, targets = 0.0, 0
    timing = {"collate": 0.0, "forward": 0.0, "tokens": 0, "padded_tokens": 0, "batches": 0}
    batches = length_sorted_batches(lengths, batch_size or len(encoded) or 1, max_tokens)
    with progress_bar(progress) as bar:
        tid = bar.add_task(description, total=len(encoded), info="")
        for rows in batches:
            t0 = time.perf_counter()
            batch = to_device(collate(encoded, rows), device)  # pinned, non-blocking on CUDA
            t1 = time.perf_counter()
            if tuner is not None:
                tuner.before()
            logits = model(batch)
            if with_loss:
                loss_sum += head_loss(logits.float(), batch.labels, reduction="sum").item()
                targets += int((batch.labels != -100).sum())
            result = logits.float().cpu().numpy()
            t2 = time.perf_counter()
            padded = batch.input_ids.numel()
            if tuner is not None:
                tuner.after(padded, t2 - t1)
            timing["collate"] += t1 - t0
            timing["forward"] += t2 - t1
            timing["padded_tokens"] += padded
            timing["tokens"] += int(batch.attention_mask.sum())
            timing["batches"] += 1
            for r, row in enumerate(rows):
                out[row] = trim_output(result[r], len(encoded.token_ids[row]), result.ndim)
            bar.update(tid, advance=len(rows), info=f"{timing['tokens'] / max(timing['forward'], 1e-9):.0f} tok/s")
    if stats is not None:
        stats.update(timing)
    return (out, loss_sum / max(targets, 1)) if with_loss else out


def trim_output(row: np.ndarray, n_tokens: int, batch_ndim: int) -> np.ndarray:
    if batch_ndim == 2:       # (labels,)
        return row
    if row.shape[0] == 2:     # spans: (2, tokens)
        return row[:, :n_tokens]
    return row[:n_tokens]     # tags: (tokens, labels)


def predict_encoded(model, encoded: Encoded, batch_size: int | None = 64, **kwargs) -> np.ndarray:
    """Class logits (rows x labels) for sentence classification."""
    outputs = predict_outputs(model, encoded, batch_size, **kwargs)
    return np.stack(outputs)[:, :model.num_labels] if outputs else np.zeros((0, model.num_labels), np.float32)


def predict(model, texts, max_length: int = 128, text_pairs=None, batch_size: int = 64,
            engine: str = "auto", precision: str = "fp32", run=None, plan=None) -> np.ndarray:
    """Predicted label indices for raw texts; `engine` and `precision` as in `evaluate` (or a resolved
    `plan`, execution/plan.py). int8-checked needs the `run` (its training language's dev set calibrates
    the threshold) and, as in `evaluate`, sentence classification and at least MIN_ROWS texts."""
    from ..engine import engine_for, notice

    enc = encode_texts(model.backbone.tokenizer, list(texts), [0] * len(texts), max_length, text_pairs)
    plan = plan or model_plan(model, engine=engine, precision=precision)
    task = get_task_for(run.config) if run is not None else None
    plan = plan.for_rows(task.head if task is not None else "unknown", len(enc))
    work = Work(partial(predict_outputs, batch_size=batch_size, max_tokens=DEFAULT_MAX_TOKENS),
                description="predicting", run=run, task=task, data_dir=run.config.data_dir if run else None)
    chosen = engine_for(plan)
    try:
        with chosen.prepared(model):
            outputs, _ = chosen.outputs(model, enc, work)
    except (XlpromptError, OSError) as exc:
        if plan.precision != "int8-checked":
            raise
        # no dev set here to calibrate on: fp32, said once
        notice(f"predicting in fp32: int8-checked needs the training language's dev set ({exc})")
        outputs = predict_outputs(model, enc, batch_size, DEFAULT_MAX_TOKENS)
    return np.stack(outputs)[:, :model.num_labels].argmax(-1) if outputs else np.zeros(0, dtype=np.int64)


def model_plan(model, *, device=None, dtype=None, precision: str = "auto", engine: str = "auto", threads="auto",
               max_tokens="auto", batch_size: int | None = None):
    """The execution plan for a loaded model: on its device and weights unless `device`/`dtype` say
    otherwise (then `apply_plan` moves it)."""
    from ..execution import resolve

    frozen = not any(p.requires_grad for p in model.backbone.parameters())
    return resolve(device if device is not None else _device(model), dtype, precision, engine, threads, max_tokens,
                   batch_size, backbone=model.backbone, trains_backbone=not frozen)


def apply_plan(model, plan) -> None:
    """Put the model where the plan says: its device, and a frozen backbone in the plan's dtype (a trained
    backbone keeps its fp32 weights and runs under autocast)."""
    if _device(model) != plan.device:
        model.to(plan.device)
    if not plan.trains_backbone and model.backbone.dtype != plan.dtype:
        model.backbone.to(plan.dtype)


def evaluate(run, languages="all", *, task: str | None = None, split: str | None = None,
             data_dir: str | None = None, batch_size: int | None = None,
             max_tokens: int | None | str = "auto", token_cache=True, threads="auto", precision: str = "auto",
             progress: bool = True, device=None, engine: str = "auto", features: bool = True, dtype=None,
             plan=None, limit_per_language: int | None = None) -> dict:
    """Per-language metrics of a run: `{"languages": {code: {"accuracy", "macro_f1", "n"}}, ...}`.

    All languages' rows are pooled and length-sorted together, so batches are full and padding small.
    `batch_size`/`max_tokens`: rows cap / padded-token budget per batch (module docstring);
    `task`: score the run on another registered task with the same labels and input format (a run
    trained on xquad scored on mlqa); default the run's own task.
    `token_cache`: True (xlprompt's cache folder), a folder, or False; `threads`: "auto", an int, or
    None (leave torch's setting); `precision`: auto | fp32 | int8 | bf16 | fp16; `engine`: auto | torch |
    onnx. `results["speed"]` says what was used and where the time went.
    `device`/`dtype`: move the run's model there and cast its frozen backbone first (default: where it is,
    as loaded). `plan`: an ExecutionPlan (execution/plan.py) instead of all of these settings. On a GPU,
    "auto" budgets are GPU-sized and threads are left alone (the probe is for CPUs).
    `features`: a head-only run at fp32 reads the frozen backbone's pooled features through their cache
    (features.py), so runs on the same backbone and data share one forward pass; False runs the model as
    for every other run (same numbers up to float rounding).
    `limit_per_language`: score at most this many rows of each language (`data.sampling.cap_rows`: a fixed,
    seedless rule that keeps parallel test sets parallel); None scores every row.
    """
    from ..engine import engine_for
    from ..execution.inference import thread_setting
    from ..data.token_cache import default_token_cache

    started = time.perf_counter()
    config = run.config
    task = scoring_task(config, task)
    data_dir = data_dir if data_dir is not None else config.data_dir
    split = split or task.eval_split
    codes = resolve_languages(languages, task.languages(data_dir))
    tokenizer = run.model.backbone.tokenizer
    frames = {code: cap_rows(task.load(split, code, data_dir), limit_per_language) for code in codes}
    loaded = time.perf_counter()
    cache = default_token_cache(token_cache)
    encoded = {code: (cache.encode(task, tokenizer, frames[code], config.max_length) if cache else
                      task.encode(tokenizer, frames[code], config.max_length)) for code in codes}
    pooled = Encoded.concat([encoded[c] for c in codes])
    tokenized = time.perf_counter()
    plan = plan or model_plan(run.model, device=device, dtype=dtype, precision=precision, engine=engine,
                              threads=threads, max_tokens=max_tokens, batch_size=batch_size)
    apply_plan(run.model, plan)
    plan = plan.for_rows(task.head, len(pooled))
    device, used, engine_used = plan.device, plan.precision, plan.engine
    threads, max_tokens, batch_size = plan.threads, plan.max_tokens, plan.batch_size
    runner = engine_for(plan)
    stats: dict = {}
    reset_peak_memory(device)
    with thread_setting(threads) as tuner, runner.prepared(run.model) as engine_info:
        prepared = time.perf_counter()
        feature_cache, check_info = None, None
        if features and runner.reads_features and uses_features(run.model, config):
            feature_cache = feature_cache_for(cache)
            outputs = head_outputs(run.model, task, frames, encoded, config.max_length, feature_cache, stats)
        else:
            work = Work(partial(predict_outputs, batch_size=batch_size, max_tokens=max_tokens, progress=progress,
                                tuner=tuner), stats, f"evaluating {len(codes)} languages", run, task, cache, data_dir)
            outputs, check_info = runner.outputs(run.model, pooled, work)
        threads_used = tuner.summary() if tuner else {"policy": "fixed" if threads else "torch default",
                                                       "final": torch.get_num_threads()}
    predicted = time.perf_counter()
    per_language, start = {}, 0
    for code in codes:
        n = len(encoded[code])
        per_language[code] = task.score(frames[code], encoded[code], outputs[start:start + n])
        start += n
    seconds = predicted - prepared
    finished = time.perf_counter()
    speed = {
        "seconds": {"load_data": loaded - started, "tokenize": tokenized - loaded,
                    "prepare_model": prepared - tokenized, "collate": stats["collate"],
                    "forward": stats["forward"], "score": finished - predicted, "total": finished - started},
        "sentences": len(pooled), "tokens": stats["tokens"], "padded_tokens": stats["padded_tokens"],
        # a head-only run served from the feature cache runs no batch: no padding then
        "padding_share": 1 - stats["tokens"] / stats["padded_tokens"] if stats["padded_tokens"] else 0.0,
        "batches": stats["batches"],
        "tokens_per_second": stats["tokens"] / max(stats["forward"], 1e-9),
        "batching": {"max_tokens": max_tokens, "batch_size": batch_size},
        "threads": threads_used, "precision": {"used": used, "requested": precision, "why": plan.why("precision"),
                                               **({"recheck": check_info} if check_info else {})},
        "engine": {"used": engine_used, "requested": engine, "why": plan.why("engine"), **(engine_info or {})},
        "plan": plan.to_dict(),
        "token_cache": ({"root": str(cache.root) if cache.root else None, **cache.stats} if cache else None),
        **device_info(device, run.model.autocast_dtype or run.model.backbone.dtype),
        "feature_cache": ({"root": str(feature_cache.root) if feature_cache.root else None, **feature_cache.stats}
                          if feature_cache else None),
    }
    trained = source_languages(config, task) + target_languages(config, task)
    return {
        "task": task.name,
        "split": split,
        "run": str(run.path) if run.path else None,
        "model": config.model,
        "train_language": ",".join(source_languages(config, task)),  # one source: its code, as always
        "train_languages": trained,  # sources and target languages: none of them is zero-shot
        "notes": task.description,  # e.g. which data trained the run where the usual train set is missing
        "limit_per_language": limit_per_language,
        "languages": per_language,
        "mean": mean_metrics(per_language, task.metric_names),
        "zero_shot_mean": mean_metrics({k: v for k, v in per_language.items() if k not in trained}, task.metric_names),
        "seconds": seconds,
        "sentences_per_second": len(pooled) / seconds if seconds else None,
        "speed": speed,
    }


def scoring_task(config, name: str | None):
    """The run's own task, or `name` when a run of that task can be scored on it unchanged."""
    trained = get_task_for(config)
    if name is None or name == trained.name:
        return trained
    other = get_task(name)
    if (type(other.format) is not type(trained.format) or other.label_names != trained.label_names
            or other.pairs != trained.pairs):
        raise XlpromptError(
            f"A run trained on {trained.name!r} (labels {', '.join(trained.label_names)}) cannot be scored on "
            f"{name!r} (labels {', '.join(other.label_names)}): the two tasks differ in labels or input format. "
            "Train a run on that task instead.")
    return other


def mean_metrics(per_language: dict, names) -> dict:
    out = {}
    for name in names:
        vals = [m[name] for m in per_language.values() if not math.isnan(m[name])]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    out["languages"] = len(per_language)
    return out


def results_frame(results: dict):
    import pandas as pd

    from ..data.languages import language_info

    rows = []
    for code, m in results["languages"].items():
        try:
            name = language_info(code).name
        except Exception:  # codes outside SIB-200's list (own data) have no metadata
            name = ""
        rows.append({"language": code, "name": name, **m})
    return pd.DataFrame(rows)


def write_results(results: dict, out_json: str | Path, csv: bool = True) -> None:
    """The JSON, then the CSV beside it, each atomically, both carrying the same `results_id` (a digest of
    the results), so a reader can tell a pair from a torn one (`read_results`). A JSON that cannot be
    written leaves both older files as they were; once the new JSON is in place the older CSV is removed
    before the new one is written, so a crash between the two leaves a new JSON and no CSV."""
    import hashlib
    import json

    out_json = Path(out_json)
    body = {k: v for k, v in results.items() if k != "results_id"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    results = {**body, "results_id": digest}
    io.write_json(out_json, results)
    if csv:
        out_json.with_suffix(".csv").unlink(missing_ok=True)
        with io.atomic_path(out_json.with_suffix(".csv")) as tmp:
            results_frame(results).assign(results_id=digest).to_csv(tmp, index=False)


def read_results(out_json: str | Path, csv: bool = True):
    """(results dict, per-language table) written by `write_results`; an error when the CSV beside the JSON
    is missing or belongs to other results (a torn pair). `csv=False`: the JSON only (table None)."""
    import pandas as pd

    out_json = Path(out_json)
    results = io.read_json(out_json)
    if not csv:
        return results, None
    table_path = out_json.with_suffix(".csv")
    if not table_path.is_file():
        raise XlpromptError(f"{table_path} is missing: the results were written without it or the writer "
                            "stopped between the two files; evaluate again.")
    table = pd.read_csv(table_path, keep_default_na=False, na_values=[""])
    ids = set(table["results_id"].astype(str)) if "results_id" in table else set()
    if ids != {str(results.get("results_id"))}:
        raise XlpromptError(f"{table_path} belongs to other results than {out_json.name} (results_id differs): "
                            "evaluate again to write them as a pair.")
    return results, table


def check_sort(sort_by: str | None, metrics) -> None:
    """Refuse a sort column the results will not have (before an evaluation that may take minutes)."""
    if sort_by is not None and sort_by != "language" and sort_by not in metrics:
        raise XlpromptError(f"Cannot sort by {sort_by!r}: this task's metrics are {', '.join(metrics)} "
                            "(or sort by 'language').")


def results_table(results: dict, sort_by: str | None = None, title: str | None = None):
    """A rich table, sorted descending by `sort_by` (default the task's first metric) or by language code,
    with the mean at the bottom."""
    from rich.table import Table

    frame = results_frame(results)
    metrics = [k for k in results["mean"] if k != "languages"]
    check_sort(sort_by, metrics)
    if sort_by == "language":
        frame = frame.sort_values("language")
    else:
        frame = frame.sort_values(sort_by or metrics[0], ascending=False)
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
