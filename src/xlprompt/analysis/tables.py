"""Tables behind the studies' figures, computed from the results store (one row per run x language).

Every figure compares along one axis (freezing, samples per class, prompt length, reparameterization,
method) while a store usually varies several. Holding the others fixed is done by `fix_other_axes`:
within each series (e.g. per model) it keeps the combination of the other axes that covers the most
values of the compared axis (then the most seeds, then the most rows), and records that choice, so
every figure's JSON says exactly which runs it shows. Seed spread: accuracy is first averaged over
languages per run (= per seed), then mean and std (ddof=1) are taken over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import XlpromptError
from ..experiments.store import done_run_ids, load_store
from .declared import (KINDS, axes, caption_of, freeze_label, held_fixed_text, is_kind, method_kind,  # noqa: F401
                       method_label, methods_that, model_label, prompt_methods, series_label, show_value,
                       shots_label, shown)


REQUIRED = ("run_id", "task", "model", "method", "seed", "freeze_model", "language", "accuracy")


@dataclass
class Study:
    """One figure's data: its table, the filters that produced it, or why it was skipped."""

    name: str
    title: str
    table: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    skipped: str | None = None
    caption: str = ""


# ------------------------------------------------------------------------------------ loading


def load_results(store_dir: str | Path) -> pd.DataFrame:
    """The store's table, with the contract's columns checked.

    A store with done run folders is read through `xlprompt.experiments.store.load_store` (which
    rebuilds a stale table from them); a bare `DIR/results.parquet` (copied elsewhere, or made by
    hand) is read as is, since rebuilding it from no run folders would empty it."""
    store_dir = Path(store_dir)
    if done_run_ids(store_dir):
        frame = load_store(store_dir)
    else:
        path = store_dir / "results.parquet"
        if not path.exists():
            raise XlpromptError(f"{store_dir} has no results.parquet: point `xlprompt report` at a store "
                                "written by `xlprompt sweep --store DIR`.")
        frame = pd.read_parquet(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise XlpromptError(f"The results store {store_dir} lacks columns {missing}; it was not written by "
                            "this version of `xlprompt sweep`.")
    if frame.empty:
        raise XlpromptError(f"The results store {store_dir} has no rows yet: run the sweep first.")
    frame = frame.copy()
    for col in axes():
        if col not in frame.columns:
            frame[col] = np.nan
    frame["freeze_model"] = frame["freeze_model"].fillna(False).astype(bool)
    frame["train_language"] = frame["train_language"].fillna("eng_Latn")
    return frame


def trained_on(frame: pd.DataFrame) -> pd.Series:
    """Rows whose language the run trained on: a source (`train_language`, comma-separated when there are
    several) or a language its few target examples came from (`target_languages`, "all": every one)."""
    sources = [str(s).split(",") for s in frame["train_language"].fillna("")]
    targets = frame["target_languages"] if "target_languages" in frame else pd.Series(None, index=frame.index)
    hit = [language in s or (isinstance(t, str) and (t == "all" or language in t.split(",")))
           for language, s, t in zip(frame["language"], sources, targets)]
    return pd.Series(hit, index=frame.index, dtype=bool)


def transfer_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot rows only (no language the run trained on) on the test split when there is one."""
    out = frame[~trained_on(frame)]
    if "split" in out and (out["split"] == "test").any():
        out = out[out["split"] == "test"]
    return out


# ------------------------------------------------------------------------------------- slicing


def _plain(value):
    """JSON-friendly scalar (numpy types, NaN -> None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def fix_other_axes(frame: pd.DataFrame, vary: list[str], keep: list[str],
                   min_values: int = 1) -> tuple[pd.DataFrame, list[dict]]:
    """Rows where every axis outside `vary` and `keep` is held at one value per `keep` group; groups
    whose best setting covers fewer than `min_values` values of `vary` are dropped."""
    others = [a for a in axes() if a in frame.columns and a not in vary and a not in keep
              and frame[a].nunique(dropna=False) > 1]
    parts, chosen = [], []
    for key, part in frame.groupby(keep, dropna=False, sort=True):
        best = None
        for okey, opart in part.groupby(others, dropna=False, sort=True) if others else [((), part)]:
            okey = okey if isinstance(okey, tuple) else (okey,)
            score = (len(opart[vary].drop_duplicates()), opart["seed"].nunique(), len(opart))
            if best is None or score > best[0]:
                best = (score, okey, opart)
        key = key if isinstance(key, tuple) else (key,)
        if best[0][0] < min_values:
            continue
        parts.append(best[2])
        chosen.append({**{k: _plain(v) for k, v in zip(keep, key)},
                       "fixed": {k: _plain(v) for k, v in zip(others, best[1])}})
    return (pd.concat(parts) if parts else frame.iloc[:0]), chosen


def one_epochs_per_shots(frame: pd.DataFrame, by: list[str], counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Where epochs vary with samples per class (a grid trains small sets longer), keep for each `by` group
    and shots value only its main epochs setting (the most seeds, then the most runs, then the most
    epochs): a shorter or longer side run at the same shots (a "why" run) would otherwise be averaged into
    that shots value's arm. `counts`: the rows before other settings were held fixed; runs are counted
    there, so the epochs that the other settings share (the grid's) wins a tie in seeds."""
    if frame.empty or "epochs" not in frame.columns or "shots" not in frame.columns:
        return frame
    counted = None
    if counts is not None and not counts.empty:
        counted = (counts.groupby([*by, "shots", "epochs"], dropna=False)["run_id"].nunique()
                   .rename("all_runs").reset_index())
    keep = []
    for _, part in frame.groupby([*by, "shots"], dropna=False, sort=False):
        runs = part.groupby([*by, "shots", "epochs"], dropna=False).agg(
            seeds=("seed", "nunique"), runs=("run_id", "nunique")).reset_index()
        if counted is not None:
            runs = runs.merge(counted, on=[*by, "shots", "epochs"], how="left")
            runs["runs"] = runs["all_runs"].fillna(runs["runs"])
        runs = runs.sort_values(["seeds", "runs", "epochs"], ascending=False)
        main = runs["epochs"].iloc[0]
        keep.append(part[part["epochs"].isna()] if pd.isna(main) else part[part["epochs"] == main])
    return pd.concat(keep)


def seed_spread(frame: pd.DataFrame, cols: list[str], metrics=("accuracy", "macro_f1")) -> pd.DataFrame:
    """Mean over languages per run, then mean/std over seeds per `cols` group."""
    metrics = [m for m in metrics if m in frame.columns]
    per_run = (frame.groupby([*cols, "run_id", "seed"], dropna=False)
               .agg(**{m: (m, "mean") for m in metrics}, languages=("language", "nunique")).reset_index())
    aggs = {}
    for m in metrics:
        aggs[f"{m}_mean"] = (m, "mean")
        aggs[f"{m}_std"] = (m, "std")
    aggs["seeds"] = ("seed", "nunique")
    aggs["languages"] = ("languages", "max")
    return per_run.groupby(cols, dropna=False).agg(**aggs).reset_index()


def per_language(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per `cols` group and language: accuracy mean/std over seeds."""
    return (frame.groupby([*cols, "language"], dropna=False)
            .agg(accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"), seeds=("seed", "nunique"))
            .reset_index())


def _needs(frame: pd.DataFrame, vary: str, keep: list[str], at_least: int = 2) -> bool:
    """Whether some `keep` group has at least `at_least` values of `vary`."""
    if frame.empty:
        return False
    counts = frame.groupby(keep, dropna=False)[vary].nunique(dropna=False)
    return bool((counts >= at_least).any())


# --------------------------------------------------------------------------------- the studies


def _axis_study(frame, name, title, vary, keep, method_filter, caption, together=()) -> Study:
    """`together`: axes that change with `vary` by design (epochs grow as samples per class shrink)."""
    rows = transfer_rows(frame)
    rows = rows[rows["method"].isin(method_filter)]
    if rows.empty:
        return Study(name, title, skipped=f"no zero-shot results of {', '.join(method_filter)} runs")
    if not _needs(rows, vary, keep):
        return Study(name, title, skipped=f"needs at least two values of {vary} for one "
                     f"{' / '.join(keep)} among {', '.join(method_filter)} runs; the store has "
                     f"{sorted(map(str, rows[vary].drop_duplicates().tolist()))}")
    unfixed = rows
    rows, chosen = fix_other_axes(rows, [vary, *together], keep, min_values=2)
    if vary == "shots" and "epochs" in together:
        rows = one_epochs_per_shots(rows, keep, counts=unfixed)
    table = seed_spread(rows, [*keep, vary])
    config = {"compare": vary, "series": keep, "methods": list(method_filter), "held_fixed": chosen,
              "rows": "zero-shot languages (target != training language), test split when present",
              "spread": "mean over languages per run, then mean and std (ddof=1) over seeds"}
    return Study(name, title, table, config, caption=caption)


def mf_study(frame: pd.DataFrame) -> Study:
    """Philippy et al. Fig. 2: transfer accuracy with vs without model freezing, per model."""
    return _axis_study(frame, "mf_vs_no_mf", "Transfer accuracy with vs without model freezing (MF)",
                       "freeze_model", ["model", "method"], prompt_methods(),
                       "Mean zero-shot accuracy over target languages; bars are mean ± std over seeds.")


def shots_study(frame: pd.DataFrame) -> Study:
    """Philippy et al. Fig. 3: transfer accuracy vs samples per class."""
    return _axis_study(frame, "shots", "Transfer accuracy vs samples per class",
                       "shots", ["model", "method", "freeze_model"], prompt_methods(),
                       "Mean zero-shot accuracy over target languages; 'all' = the whole training set.",
                       together=("epochs",))


def length_study(frame: pd.DataFrame) -> Study:
    """Philippy et al. Fig. 4: transfer accuracy vs prompt length."""
    return _axis_study(frame, "prompt_length", "Transfer accuracy vs prompt length",
                       "prompt_length", ["model", "method", "freeze_model"], prompt_methods(),
                       "Mean zero-shot accuracy over target languages; band = ± std over seeds.")


def reparam_study(frame: pd.DataFrame) -> Study:
    """Philippy et al. Fig. 5: per-language relative change (%) of accuracy, reparam vs none."""
    name, title = "reparam_impact", "Per-language impact of prompt reparameterization"
    rows = frame[is_kind(frame["method"], "input")]
    if "split" in rows and (rows["split"] == "test").any():
        rows = rows[rows["split"] == "test"]
    keep = ["model", "freeze_model"]
    if not _needs(rows, "reparam", keep) or "none" not in set(rows["reparam"].dropna()):
        return Study(name, title, skipped="needs input-prompt runs with reparam 'none' and another "
                     f"reparameterization for one model; the store has {sorted(rows['reparam'].dropna().unique())}")
    rows, chosen = fix_other_axes(rows, ["reparam"], keep)
    acc = rows.groupby([*keep, "reparam", "language", "seed"], dropna=False)["accuracy"].mean().reset_index()
    base = acc[acc["reparam"] == "none"].drop(columns="reparam").rename(columns={"accuracy": "base"})
    out = []
    for variant in sorted(set(acc["reparam"]) - {"none"}):
        other = acc[acc["reparam"] == variant].drop(columns="reparam")
        paired = other.merge(base, on=[*keep, "language", "seed"])  # same seed = same data sample
        paired["impact"] = (paired["accuracy"] - paired["base"]) / paired["base"] * 100.0
        agg = (paired.groupby([*keep, "language"], dropna=False)
               .agg(impact_mean=("impact", "mean"), impact_std=("impact", "std"), seeds=("seed", "nunique"),
                    accuracy_none=("base", "mean"), accuracy_reparam=("accuracy", "mean")).reset_index())
        agg.insert(2, "reparam", variant)
        out.append(agg)
    table = pd.concat(out).sort_values([*keep, "reparam", "impact_mean"], ascending=False)
    config = {"compare": "reparam vs none", "series": keep, "held_fixed": chosen,
              "impact": "(accuracy_reparam - accuracy_none) / accuracy_none * 100, paired by seed, "
                        "then mean and std over seeds", "rows": "every evaluated language, test split"}
    return Study(name, title, table, config,
                 caption="Relative change of accuracy per language (positive: reparameterization helps).")


def methods_study(frame: pd.DataFrame) -> Study:
    """Tu et al.: prompt tuning (frozen model) vs fine-tuning, per task and language."""
    name, title = "prompt_vs_finetune", "Prompt tuning vs fine-tuning per task and language"
    rows = transfer_rows(frame)
    prompt = rows[rows["method"].isin(prompt_methods()) & rows["freeze_model"]]
    ft = rows[is_kind(rows["method"], "finetune")]
    pairs = set(map(tuple, prompt[["task", "model"]].drop_duplicates().values)) & \
        set(map(tuple, ft[["task", "model"]].drop_duplicates().values))
    if not pairs:
        return Study(name, title, skipped="needs fine-tuning runs and frozen prompt-tuning runs of the same "
                     "task and model")
    parts, chosen = [], []
    for task, model in sorted(pairs):
        for method, sub in pd.concat([prompt, ft]).query("task == @task and model == @model").groupby("method"):
            # each method keeps its own best-covered settings (lengths, LRs differ between methods)
            sub, fixed = fix_other_axes(sub, ["language"], ["task", "model", "method"])
            parts.append(sub)
            chosen += fixed or [{"task": task, "model": model, "method": method, "fixed": {}}]
    sel = pd.concat(parts)
    table = per_language(sel, ["task", "model", "method"])
    config = {"compare": "method", "series": ["task", "model"], "held_fixed": chosen,
              "prompt_runs": "input/deep prompts with the model frozen",
              "rows": "zero-shot languages, test split when present"}
    return Study(name, title, table, config,
                 caption="Each point is a language: accuracy of fine-tuning (x) vs prompt tuning (y), "
                         "mean ± std over seeds; above the diagonal prompt tuning transfers better.")


def headline_slice(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """The runs the distance analysis compares: prompt methods, one setting per (model, method,
    freezing) chosen like Fig. 2's, so frozen and unfrozen differ only in freezing where possible."""
    rows = transfer_rows(frame)
    rows = rows[rows["method"].isin(prompt_methods())]
    if rows.empty:
        rows = transfer_rows(frame)
    return fix_other_axes(rows, ["freeze_model"], ["model", "method"])


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The axes that actually vary in a frame (plus model and method, always shown)."""
    return [a for a in axes() if a in frame.columns and (a in ("model", "method") or frame[a].nunique(dropna=False) > 1)]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every configuration with its mean ± std transfer accuracy over seeds."""
    rows = transfer_rows(frame)
    cols = config_columns(rows)
    return seed_spread(rows, cols).sort_values("accuracy_mean", ascending=False)
