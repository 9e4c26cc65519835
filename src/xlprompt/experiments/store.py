"""The results store: one Parquet table of every done run × language × metric, derived from run folders.

Layout of a store DIR:

    DIR/runs/<run_id>/      run folder (Run.save) + spec.json + results.json, then done.json last
                            (or failed.json after an error); a folder without done.json is not a result
    DIR/runs/<run_id>.lock  held while a process works on the run
    DIR/results.parquet     this table, always rebuildable from the run folders

Columns (a contract the report reads): run_id; then one column per declared setting of a run (`settings.setting`
with column=True: task, model, method (its type: input_prompt / deep_prompt / finetune / head), the method's
options such as prompt_length (nullable int) and reparam, shots (nullable int; null = all), seed,
freeze_model, lr, epochs, train_language, split, ...), so a new setting is a new column with no change
here; then the outcomes: language, accuracy, macro_f1, n, trainable_parameters, backbone_parameters,
train_seconds, best_epoch, dev_accuracy, finished, late_dev_gain (the relative dev-loss drop over the last
quarter of the epochs) and any other metric a task returns, as float columns.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd

from ..core import io
from ..core.errors import XlpromptError
from ..core.settings import aliases_of
from .grid import RunSpec, grid_settings, spec_settings

RESULTS_FILE = "results.parquet"
DONE, FAILED, SPEC, RESULTS = "done.json", "failed.json", "spec.json", "results.json"

# name -> pandas dtype; nullable dtypes so an empty store and a full one have the same schema
OUTCOMES = {
    "language": "string", "accuracy": "float64", "macro_f1": "float64", "n": "Int64",
    "trainable_parameters": "Int64", "backbone_parameters": "Int64", "train_seconds": "float64",
    "best_epoch": "Int64", "dev_accuracy": "float64", "finished": "float64", "late_dev_gain": "float64",
}


def setting_columns() -> dict:
    """name -> Setting of every declared setting the store keeps as a column."""
    return {k: s for k, s in grid_settings().items() if s.column}


def columns() -> dict[str, str]:
    """The store's schema: run_id, the declared settings, the outcomes."""
    return {"run_id": "string", **{k: s.dtype for k, s in setting_columns().items()}, **OUTCOMES}


def runs_dir(store_dir: str | Path) -> Path:
    return Path(store_dir) / "runs"


def run_dirs(store_dir: str | Path) -> list[Path]:
    root = runs_dir(store_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def done_run_ids(store_dir: str | Path) -> list[str]:
    return [p.name for p in run_dirs(store_dir) if (p / DONE).is_file()]


def failed_runs(store_dir: str | Path) -> dict[str, dict]:
    """run id -> failed.json, for runs that failed and have not been redone since."""
    out = {}
    for p in run_dirs(store_dir):
        if (p / FAILED).is_file() and not (p / DONE).is_file():
            try:
                out[p.name] = io.read_json(p / FAILED)
            except (OSError, json.JSONDecodeError):  # written atomically, so only a foreign file breaks
                out[p.name] = {"error": "unreadable failed.json"}
    return out


def run_rows(run_dir: str | Path) -> list[dict]:
    """The store rows of one done run (one per evaluated language)."""
    run_dir = Path(run_dir)
    done = io.read_json(run_dir / DONE)
    results = io.read_json(run_dir / RESULTS)
    meta = io.read_json(run_dir / "run.json")
    flat, config = saved_settings(done["spec"])
    info, params = meta.get("info", {}), meta.get("parameters", {})
    curve = io.read_json(run_dir / "curve.json") if (run_dir / "curve.json").is_file() else []
    best = info.get("best_epoch")
    dev_acc = (next((c.get("dev_accuracy") for c in curve if c.get("epoch") == best), None) if best is not None
               else info.get("dev_accuracy"))  # runs without epochs (the linear probe) say it in info
    base = {"run_id": done["run_id"],
            **{k: (s.stored(config) if s.stored else flat.get(k)) for k, s in setting_columns().items()}}
    base.update({
        # what the run trained on and was scored on, as its results say (the task's default resolved)
        "train_language": results.get("train_language") or flat["train_language"],
        "split": results.get("split", flat["split"]),
        # what trained, reparameterization nets included (the saved prompt is folded and smaller)
        "trainable_parameters": info.get("trained_parameters", params.get("trainable")),
        "backbone_parameters": params.get("backbone"), "train_seconds": info.get("train_seconds"),
        "best_epoch": best, "dev_accuracy": dev_acc, "finished": done.get("finished"),
        "late_dev_gain": late_dev_gain(curve),
    })
    return [{**base, "language": code, **metrics} for code, metrics in results["languages"].items()]


def saved_settings(spec: dict) -> tuple[dict, dict]:
    """(flat settings, config dict) of a saved spec, older spellings read through the declared aliases.
    A run of a method this process does not know (a plugin not imported here) keeps its values as saved,
    so one such run never stops a store from being read."""
    try:
        parsed = RunSpec.from_dict(spec)
        return spec_settings(parsed), parsed.config.to_dict()
    except XlpromptError:
        config = dict(spec["config"])
        method = dict(config.get("method") or {})
        names = aliases_of(grid_settings())
        flat = {names.get(k, k): v for k, v in {**config, **method}.items() if k not in ("method", "type")}
        flat.update(method=method.get("type"), languages=spec.get("languages"), split=spec.get("split"),
                    limit_per_language=spec.get("limit_per_language"), alignment=spec.get("alignment"))
        return flat, config


def late_dev_gain(curve: list[dict]) -> float | None:
    """Relative drop of the dev loss over the last quarter of the epochs (at least one): how much a run
    was still improving when it stopped. None for runs without epochs."""
    losses = [c["dev_loss"] for c in curve if c.get("dev_loss") is not None]
    if len(losses) < 2:
        return None
    before = losses[-1 - max(1, math.ceil(len(losses) / 4))]
    return (before - losses[-1]) / before if before else None


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame, schema = pd.DataFrame(rows), columns()
    for name in schema:
        if name not in frame:
            frame[name] = None
    extra = [c for c in frame.columns if c not in schema]
    frame = frame[list(schema) + sorted(extra)]
    frame = frame.astype(schema)
    for c in extra:  # further metrics a task reports (e.g. exact match): floats
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype("float64")
    return frame.sort_values(["run_id", "language"], kind="stable").reset_index(drop=True)


def _write(store_dir: Path, frame: pd.DataFrame) -> None:
    with io.atomic_path(store_dir / RESULTS_FILE) as tmp:
        frame.to_parquet(tmp, index=False)


def _clean_temp_files(store_dir: Path, older_than: float = 600.0) -> None:
    """Temp files a killed writer left (another writer's fresh one is left alone)."""
    now = time.time()
    for p in store_dir.glob(f".{RESULTS_FILE}.*.tmp"):
        try:
            if now - p.stat().st_mtime > older_than:
                p.unlink()
        except FileNotFoundError:
            pass


def rebuild_store(store_dir: str | Path) -> pd.DataFrame:
    """Read every done run folder and (re)write DIR/results.parquet atomically."""
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(store_dir)
    rows = []
    for run_id in done_run_ids(store_dir):
        rows += run_rows(runs_dir(store_dir) / run_id)
    frame = _frame(rows)
    _write(store_dir, frame)
    return frame


def update_store(store_dir: str | Path, run_ids: list[str]) -> pd.DataFrame:
    """Add (or replace) the rows of some done runs without rereading the others.

    Two processes updating at once may lose each other's rows; `load_store` notices (it compares run ids,
    not only times) and rebuilds, and every sweep ends with a full rebuild.
    """
    store_dir = Path(store_dir)
    path = store_dir / RESULTS_FILE
    if not path.is_file():
        return rebuild_store(store_dir)
    old = pd.read_parquet(path)
    old = old[~old["run_id"].isin(run_ids)]
    rows = [r for rid in run_ids for r in run_rows(runs_dir(store_dir) / rid)]
    frame = _frame(old.to_dict("records") + rows)
    _write(store_dir, frame)
    return frame


def load_store(store_dir: str | Path) -> pd.DataFrame:
    """The store's table; rebuilt when missing or when it does not match the done run folders."""
    store_dir = Path(store_dir)
    path = store_dir / RESULTS_FILE
    done = done_run_ids(store_dir)
    if path.is_file():
        stamp = path.stat().st_mtime
        fresh = all(os.stat(runs_dir(store_dir) / rid / DONE).st_mtime <= stamp for rid in done)
        if fresh:
            frame = pd.read_parquet(path)
            # a table written by an older xlprompt lacks newer columns: rebuild it from the run folders
            if set(frame["run_id"].unique()) == set(done) and set(columns()) <= set(frame.columns):
                return frame
    return rebuild_store(store_dir)


def store_summary(store_dir: str | Path) -> dict:
    """Counts of done, failed and incomplete run folders (incomplete: crashed or running now)."""
    dirs = run_dirs(store_dir)
    done = [p.name for p in dirs if (p / DONE).is_file()]
    failed = failed_runs(store_dir)
    incomplete = [p.name for p in dirs if p.name not in failed and p.name not in done]
    return {"done": done, "failed": failed, "incomplete": incomplete}
