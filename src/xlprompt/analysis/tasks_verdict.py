"""Tu et al.'s claims task by task and pooled over tasks, each row naming the method and task it tested.

Per task, the score is the task's first metric (accuracy for XNLI, PAWS-X, UD POS and SIB-200; entity F1
for PAN-X), on every language but the training language. The arms: the frozen deep prompt, the frozen
input prompt, full fine-tuning and the converged probe (head only), one setting each per (task, model,
samples per class) as `tables.fix_other_axes` picks it. A paired comparison within a task runs as every
other one (`stats._row`: the seeds both arms share, per-language seed means, a bootstrap interval over
languages, each seed's effect).

Pooled over tasks, each task counts once: the effect is the mean over tasks of each task's mean
per-language difference, its interval resamples languages within each task (`N_BOOT` draws), and each
seed's effect is the mean over tasks of that seed's effect (on the seeds every task's arms share).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats as S
from . import tables as T

ARMS = {"input": "input prompt (MF)", "finetune": "fine-tuning", "head": "probe"}  # and "deep:L", per length
COMPARISONS = (("deep", "finetune"), ("input", "finetune"), ("deep", "input"), ("deep", "head"))


def arm_label(arm: str) -> str:
    return f"deep prompt L={arm.split(':')[1]} (MF)" if arm.startswith("deep:") else ARMS[arm]


def _pairs_of(arms: dict) -> list[tuple[str, str, str]]:
    """(comparison, a, b) for the arms present: each deep prompt length against the others."""
    out = []
    for a, b in COMPARISONS:
        a_ids = sorted((k for k in arms if k.startswith("deep:")), key=lambda k: int(k.split(":")[1])) \
            if a == "deep" else [a]
        out += [(f"{a}_vs_{b}", x, b) for x in a_ids if x in arms and b in arms]
    return out
TASK_NAMES = {"sib200": "SIB-200", "xnli": "XNLI", "pawsx": "PAWS-X", "udpos": "UD POS", "panx": "PAN-X",
              "xquad": "XQuAD", "mlqa": "MLQA", "tydiqa": "TyDiQA"}


def task_label(task: str) -> str:
    return TASK_NAMES.get(task, task)


def primary_metric(task: str) -> str:
    from ..tasks import get_task

    try:
        return get_task(task).metric_names[0]
    except Exception:  # noqa: BLE001 - a store of a task this install does not know: its accuracy
        return "accuracy"


def scored_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot rows with `accuracy` replaced by each task's first metric (the stats read `accuracy`)."""
    rows = frame[~T.trained_on(frame)]
    parts = []
    for task, part in rows.groupby("task", sort=True):
        metric = primary_metric(task)
        if metric not in part:
            continue
        parts.append(part.assign(accuracy=part[metric], metric=metric))
    return pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0].assign(metric="accuracy")


def arms_by_task(rows: pd.DataFrame) -> dict:
    """{(task, model, shots): {arm: rows}}, one setting per arm."""
    frozen = rows["freeze_model"].astype(bool)
    pick = {"input": rows[T.is_kind(rows["method"], "input") & frozen & (rows["reparam"].fillna("none") == "none")],
            "finetune": rows[T.is_kind(rows["method"], "finetune")], "head": rows[T.is_kind(rows["method"], "head")]}
    deep = rows[T.is_kind(rows["method"], "prefix") & frozen]
    for length, part in deep.groupby("prompt_length", sort=True):
        pick[f"deep:{int(length)}"] = part
    out: dict = {}
    for arm, sub in pick.items():
        if sub.empty:
            continue
        # the setting that covers the most sample sizes (and seeds), as stats.method_arms picks it
        fixed, _ = T.fix_other_axes(sub, ["shots", "epochs"], ["task", "model"])
        fixed = T.one_epochs_per_shots(fixed, ["task", "model"], counts=sub)
        for (task, model, shots), part in fixed.groupby(["task", "model", "shots"], dropna=False, sort=True):
            key = (task, model, None if pd.isna(shots) else int(shots))
            out.setdefault(key, {})[arm] = part
    return out


def _setting(task: str, shots) -> str:
    return f"{task_label(task)}, {T.shots_label(shots)} per class" if task == "sib200" else task_label(task)


def per_task(frame: pd.DataFrame, n_boot: int = S.N_BOOT) -> pd.DataFrame:
    """One row per task setting and comparison: `stats._row` columns plus task, metric, a_arm, b_arm."""
    rows = scored_rows(frame)
    out = []
    for (task, model, shots), arms in sorted(arms_by_task(rows).items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                        S._shots_order(kv[0][2]))):
        for comparison, a, b in _pairs_of(arms):
            row = S._row(comparison, {"model": model, "shots": shots}, arm_label(a), arm_label(b), arms[a], arms[b],
                         n_boot)
            out.append({**row, "task": task, "metric": arms[a]["metric"].iloc[0], "a_arm": a, "b_arm": b,
                        "series": f"{_setting(task, shots)} ({T.model_label(model)})"})
    return pd.DataFrame(out)


def _differences(a_rows: pd.DataFrame, b_rows: pd.DataFrame) -> np.ndarray:
    a_rows, b_rows = S.matched_seeds(a_rows, b_rows)
    d = (a_rows.groupby("language")["accuracy"].mean() - b_rows.groupby("language")["accuracy"].mean()).dropna()
    return d.to_numpy(dtype=float)


def pooled_effect(pairs: dict, n_boot: int = S.N_BOOT, seed: int = S.SEED, level: float = S.LEVEL) -> dict:
    """`pairs`: {task: (a_rows, b_rows)}. Each task's mean per-language difference, averaged over tasks; the
    interval resamples languages within each task; per seed, the mean over tasks of that seed's effect."""
    diffs = {task: _differences(a, b) for task, (a, b) in pairs.items()}
    diffs = {task: d for task, d in diffs.items() if len(d)}
    if not diffs:
        return {"tasks": 0, "languages": 0, "effect": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "per_task": {}, "seed_effects": "", "seeds_agree": None, "seeds": 0}
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    for d in diffs.values():
        draws += d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    draws /= len(diffs)
    tail = (1 - level) / 2 * 100
    shared = set.intersection(*[set(a["seed"].dropna()) & set(b["seed"].dropna()) for a, b in pairs.values()])
    per_seed = []
    for s in sorted(shared):
        effects = [S.seed_effects(a[a["seed"] == s], b[b["seed"] == s]) for a, b in pairs.values()]
        per_seed.append(float(np.mean([e[0] for e in effects if e])))
    return {"tasks": len(diffs), "languages": int(sum(len(d) for d in diffs.values())),
            "effect": float(np.mean([d.mean() for d in diffs.values()])),
            "ci_low": float(np.percentile(draws, tail)), "ci_high": float(np.percentile(draws, 100 - tail)),
            "per_task": {task: float(d.mean()) for task, d in diffs.items()}, "seeds": len(shared),
            "seed_effects": ";".join(f"{e:+.4f}" for e in per_seed), "seeds_agree": S.seeds_agree(per_seed)}


def pooled(frame: pd.DataFrame, n_boot: int = S.N_BOOT) -> pd.DataFrame:
    """Per model and comparison, pooled over the tasks trained on their whole budget (SIB-200 counts with
    its largest samples-per-class setting, so each task enters once)."""
    rows = scored_rows(frame)
    arms = arms_by_task(rows)
    largest = {}
    for task, model, shots in arms:
        best = largest.get((task, model))
        if best is None or S._shots_order(shots) > S._shots_order(best):
            largest[(task, model)] = shots
    out = []
    for model in sorted({m for _, m in largest}):
        for a, b in COMPARISONS:
            pairs, lengths = {}, []
            for (task, m), shots in sorted(largest.items()):
                found = {a_id: b_id for _, a_id, b_id in _pairs_of(arms[(task, m, shots)]) if a_id.split(":")[0] == a
                         and b_id == b} if m == model else {}
                if found:  # a task with several deep lengths enters with its first (Tu's length per task)
                    a_id = next(iter(found))
                    pairs[task] = (arms[(task, m, shots)][a_id], arms[(task, m, shots)][b])
                    lengths.append(f"{task_label(task)} L={a_id.split(':')[1]}" if ":" in a_id else task_label(task))
            if len(pairs) < 2:
                continue
            label = "deep prompt (MF; Tu's length per task)" if a == "deep" else ARMS[a]
            out.append({"comparison": f"{a}_vs_{b}", "model": model, "a": label, "b": ARMS[b],
                        "task_list": ", ".join(lengths), **pooled_effect(pairs, n_boot)})
    return pd.DataFrame(out)


def recorded_alignment(frame: pd.DataFrame, store_dir) -> pd.DataFrame:
    """The last-layer alignment each run recorded in its folder (a sweep with `alignment = N`), one row per
    (run, language): task, model, shots, arm, seed, language, retrieval, cosine. Runs without it are left out."""
    from pathlib import Path

    from ..core import io
    from ..evaluation.representations import FILE

    out = []
    for (task, model, shots), arms in arms_by_task(scored_rows(frame)).items():
        for arm, rows in arms.items():
            for run_id, part in rows.groupby("run_id"):
                found = io.read_cache_entry(Path(store_dir) / "runs" / str(run_id) / FILE)
                if found is None:
                    continue
                out += [{"task": task, "model": model, "shots": shots, "arm": arm, "run_id": run_id,
                         "seed": int(part["seed"].iloc[0]), **r} for r in found["rows"]]
    return pd.DataFrame(out)


def alignment_comparisons(measured: pd.DataFrame, metric: str = "retrieval", n_boot: int = S.N_BOOT) -> pd.DataFrame:
    """Prompt minus fine-tuning in `metric` per task setting, for each prompt kind that recorded alignment,
    as `stats._row` rows (comparison "alignment") with the task in the series."""
    out = []
    if measured.empty:
        return pd.DataFrame(out)
    for (task, model, shots), part in measured.groupby(["task", "model", "shots"], dropna=False, sort=True):
        arms = {arm: rows.rename(columns={metric: "accuracy"}) for arm, rows in part.groupby("arm")}
        shots = None if pd.isna(shots) else int(shots)
        for _, a, b in _pairs_of(arms):
            if b != "finetune":
                continue
            row = S._row("alignment", {"model": model, "shots": shots}, arm_label(a), arm_label(b), arms[a],
                         arms[b], n_boot)
            out.append({**row, "task": task, "series": f"{_setting(task, shots)} ({T.model_label(model)})"})
    return pd.DataFrame(out)
