"""Tu et al.'s alignment claim with seeds: does prompt tuning leave sentence representations better aligned
across languages than fine-tuning does?

For each run of the two arms the verdict compares (frozen input prompt vs fine-tuning, per model and
samples per class: `stats.method_arms`), the last-layer representations of `sentences` parallel test
sentences per language (with the run's prompt; the fine-tuned model as trained) give, per language, the
retrieval accuracy of the parallel English sentence and the mean cosine to it (`alignment.py`). The
comparison then runs like every other one: per-language seed means on the seeds both arms share, the mean
difference over languages with a bootstrap interval, and a Wilcoxon p-value.

Each run's numbers are written into its run folder (`alignment.json`, atomically) with the languages and
sentence count they cover, so a report reuses them, a snapshot of the store carries them (the fine-tuned
runs' weights stay behind there), and `compute=False` reads only what is already measured.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..core import io
from ..runs.config import source_languages
from ..evaluation.representations import FILE, LANGUAGES
from . import stats as S
from . import tables as T


def _cached(run_dir: Path, languages: list[str] | None, sentences: int | None) -> pd.DataFrame | None:
    """The run's stored numbers for `languages` (None: all it has), or None when they do not cover them;
    `sentences` None takes them whatever count they were measured on (a sweep's `alignment = N`)."""
    found = io.read_cache_entry(run_dir / FILE)
    if found is None:
        return None
    have = found.get("languages", [])
    if (sentences is not None and found.get("sentences") != sentences) or not have \
            or not set(languages or have) <= set(have):
        return None
    rows = pd.DataFrame(found["rows"])
    return rows[rows["language"].isin(languages or have)].reset_index(drop=True)


def measure_run(run_dir: Path, languages: list[str] | None, sentences: int) -> tuple[pd.DataFrame, str]:
    """Last-layer retrieval and cosine per language for one run folder, from its `alignment.json` when that
    covers the request (a sweep writes it while a fine-tuned run's weights are there), else computed (and
    written there)."""
    from .. import load
    from ..evaluation.representations import measure_run as measure
    from ..evaluation.representations import pick_languages
    from ..runs.run import Run
    from ..tasks import get_task

    config = Run.read_config(run_dir)
    task = get_task(config.task)
    pivot = source_languages(config, task)[0]  # the first source
    available = [c for c in task.languages(config.data_dir) if c != pivot]
    codes = [c for c in (languages or pick_languages(sorted(available), LANGUAGES)) if c in available]
    cached = _cached(run_dir, codes, sentences)
    if cached is not None:
        return cached, "cached"
    started = time.perf_counter()
    found = measure(load(run_dir), codes, sentences)
    io.write_cache_entry(run_dir / FILE, found)  # a read-only store: measured again next time
    return pd.DataFrame(found["rows"]), f"{time.perf_counter() - started:.0f}s"


def measure(frame: pd.DataFrame, store_dir: Path, *, compute: bool = True, languages=None,
            sentences: int = 100) -> tuple[pd.DataFrame, list[str]]:
    """One row per (run, language) of the prompt (input and deep) and fine-tuning arms of every task with
    parallel data: run_id, task, model, shots, arm, seed, language, retrieval, cosine. Runs whose numbers are
    neither on disk nor computable are named in the notes."""
    from ..tasks import get_task
    from . import tasks_verdict as TV

    rows, notes = [], []
    for (task, model, shots), arms in TV.arms_by_task(TV.scored_rows(frame)).items():
        if "finetune" not in arms or get_task(task).parallel_split is None:
            continue
        for arm in [a for a in arms if a != "head"]:
            for run_id, part in arms[arm].groupby("run_id"):
                run_dir = store_dir / "runs" / str(run_id)
                if not compute:  # what the run folder holds, on whatever count it was measured
                    found = _cached(run_dir, languages, None)
                    if found is None:
                        continue
                    measured, how = found, "cached"
                else:
                    try:
                        measured, how = measure_run(run_dir, languages, sentences)
                    except Exception as exc:  # noqa: BLE001 - e.g. a snapshot without the fine-tuned weights
                        notes.append(f"alignment of {run_id} not measured ({type(exc).__name__}: {exc})")
                        continue
                notes.append(f"alignment of {run_id} ({TV.task_label(task)}, {TV.arm_label(arm)}, "
                             f"{T.shots_label(shots)} per class): {how}")
                rows.append(measured.assign(run_id=run_id, task=task, model=model, shots=shots, arm=arm,
                                            seed=int(part["seed"].iloc[0])))
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), notes


def comparisons(measured: pd.DataFrame, metric: str = "retrieval", n_boot: int = S.N_BOOT) -> pd.DataFrame:
    """Each prompt kind minus fine-tuning in `metric` per task setting, as `stats.comparisons` rows
    (comparison "alignment"), on the seeds both arms share (`tasks_verdict.alignment_comparisons`). Rows
    without a task are SIB-200's, arm "prompt" the input prompt (stores measured before tasks were kept)."""
    from . import tasks_verdict as TV

    if measured.empty:
        return pd.DataFrame()
    measured = measured.copy()
    if "task" not in measured:
        measured["task"] = "sib200"
    measured["arm"] = measured["arm"].replace({"prompt": "input"})
    return TV.alignment_comparisons(measured, metric, n_boot)
