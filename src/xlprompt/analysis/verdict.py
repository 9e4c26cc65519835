"""The verdict table: one row per claim of the two studies (per setting that tests it), with the number
that tests it on the store's model, its interval, and holds / does not hold / undecided.

A row is "undecided" when either arm has fewer than `MIN_SEEDS` seeds, fewer than `MIN_LANGUAGES`
languages are compared, the 95 % interval spans zero, or the seeds disagree: the interval resamples
languages, so it cannot see a spread over seeds, and an effect that changes sign from one seed to another
(each seed's mean over languages, `stats.seed_effects`) is not decided by it. Otherwise the interval's
side decides.
Reparameterization's claim is about heterogeneity, so it is decided by a Friedman test of the
seed-paired per-language differences (languages as treatments, seeds as blocks) at `ALPHA`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import stats as S
from . import tables as T
from . import tasks_verdict as TV

MIN_SEEDS = 3
MIN_LANGUAGES = 10
ALPHA = 0.05
VERDICT_DISTANCE = "featural"  # URIEL's combined distance (the others are in statistics.csv)
HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"


def _fmt(x, scale=100.0, digits=1, signed=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x * scale:+.{digits}f}" if signed else f"{x * scale:.{digits}f}"


def _p(p) -> str:
    return "n/a" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"


def decide(effect_sign: int, ci_low, ci_high, seeds: int, languages: int, agree=None) -> tuple[str, str]:
    """(verdict, why) for a claim that the effect has sign `effect_sign` (+1: A better than B). `agree`:
    whether every seed's effect has the same sign (`stats.seeds_agree`); False keeps the row undecided,
    since the interval (languages resampled) does not see the spread over seeds."""
    if languages < MIN_LANGUAGES:
        return UNDECIDED, f"{languages} languages (needs {MIN_LANGUAGES})"
    if seeds < MIN_SEEDS:
        return UNDECIDED, f"{seeds} seed(s) (needs {MIN_SEEDS})"
    if ci_low is None or math.isnan(ci_low) or ci_low <= 0 <= ci_high:
        return UNDECIDED, "the interval spans zero"
    if agree is not None and not pd.isna(agree) and not bool(agree):
        return UNDECIDED, "the seeds' effects differ in sign"
    agrees = (ci_low > 0) == (effect_sign > 0)
    return (HOLDS, "the interval excludes zero") if agrees else (FAILS, "the interval excludes zero, other side")


def _per_seed(effects, digits=1) -> str:
    """"; per seed +3.4 / -2.2" from `stats.seed_effects`' "+0.0340;-0.0220" (empty under 2 seeds)."""
    if not isinstance(effects, str) or ";" not in effects:
        return ""
    return "; per seed " + " / ".join(_fmt(float(e), digits=digits) for e in effects.split(";"))


def _paired_rows(table: pd.DataFrame, comparison: str, claim: str, sign: int, unit: str = "pts") -> list[dict]:
    out = []
    if table.empty:
        return out
    for r in table[table["comparison"] == comparison].itertuples():
        seeds = min(r.seeds_a, r.seeds_b)
        verdict, why = decide(sign, r.ci_low, r.ci_high, seeds, r.languages, getattr(r, "seeds_agree", None))
        out.append({"claim": claim, "setting": f"{r.series}: {r.a} vs {r.b}",
                    "number": f"{_fmt(r.effect)} {unit} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}], "
                              f"p={_p(r.p_value)}; {r.a} {_fmt(r.mean_a, signed=False)} vs "
                              f"{r.b} {_fmt(r.mean_b, signed=False)} (sd over seeds "
                              f"{_fmt(r.seed_std_a, signed=False)} / {_fmt(r.seed_std_b, signed=False)})"
                              f"{_per_seed(getattr(r, 'seed_effects', ''))}",
                    "languages": r.languages, "seeds": seeds, "verdict": verdict, "why": why})
    return out


def reparam_heterogeneity(frame: pd.DataFrame) -> pd.DataFrame:
    """Per reparameterization comparison: languages helped / hurt (seed-mean difference), the spread of
    per-language effects, and a Friedman test that the effect differs between languages."""
    from scipy import stats

    prompts = T.transfer_rows(frame)
    prompts = prompts[T.is_kind(prompts["method"], "input")]
    out = []
    for keys, arms in S._groups(prompts, ["reparam"], ["model", "freeze_model"]):
        if "none" not in arms:
            continue
        for variant in sorted(set(arms) - {"none"}):
            a = arms[variant].groupby(["language", "seed"])["accuracy"].mean()
            b = arms["none"].groupby(["language", "seed"])["accuracy"].mean()
            d = (a - b).dropna().unstack("seed").dropna(axis=1)  # languages x seeds both arms ran
            per_language = d.mean(axis=1)
            seeds, languages = d.shape[1], d.shape[0]
            p = float("nan")
            if seeds >= 2 and languages >= 3 and np.ptp(d.to_numpy()) > 0:
                p = float(stats.friedmanchisquare(*d.to_numpy()).pvalue)
            out.append({"series": S._series(keys), "variant": variant, "languages": languages, "seeds": seeds,
                        "helped": int((per_language > 0).sum()), "hurt": int((per_language < 0).sum()),
                        "effect_mean": float(per_language.mean()) if languages else float("nan"),
                        "effect_sd": float(per_language.std(ddof=1)) if languages > 1 else float("nan"),
                        "p_value": p})
    return pd.DataFrame(out)


def verdict_table(frame: pd.DataFrame, langs: pd.DataFrame | None, n_boot: int = S.N_BOOT,
                  alignment: pd.DataFrame | None = None) -> dict:
    """{"verdict": DataFrame (claim, setting, number, languages, seeds, verdict, why), "statistics": every
    paired comparison, "length_slopes", "distance_slopes", "reparam", "stopped_early"}. `alignment`:
    `alignment_seeds.comparisons` rows for the alignment claim."""
    table = _per_task_comparisons(frame, n_boot)
    slopes = S.length_slopes(frame, n_boot)
    distances = S.distance_slopes(frame, langs, n_boot) if langs is not None else pd.DataFrame()
    reparam = reparam_heterogeneity(frame)
    rows = _paired_rows(table, "mf", "Freezing the model (MF) improves transfer (Philippy)", +1)
    if not distances.empty:
        for r in distances[distances["distance"] == VERDICT_DISTANCE].itertuples():
            verdict, why = decide(+1, r.ci_low, r.ci_high, r.seeds, r.languages, r.seeds_agree)
            rows.append({"claim": "MF reduces the dependence of transfer on distance from the training language "
                                  "(Philippy)", "setting": f"{r.series}; {r.distance} distance",
                         "number": f"slope MF {_fmt(r.slope_frozen)} vs no MF {_fmt(r.slope_unfrozen)} pts per unit; "
                                   f"difference {_fmt(r.effect)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                                   f"{_per_seed(r.seed_effects)}",
                         "languages": r.languages, "seeds": r.seeds, "verdict": verdict, "why": why})
    else:
        rows.append({"claim": "MF reduces the dependence of transfer on distance from the training language "
                              "(Philippy)", "setting": "", "number": "not measured (needs MF and no MF runs and "
                     "URIEL distances)", "languages": 0, "seeds": 0, "verdict": UNDECIDED, "why": "not measured"})
    for r in slopes.itertuples():
        verdict, why = decide(-1, r.ci_low, r.ci_high, r.seeds, r.languages, r.seeds_agree)
        rows.append({"claim": "Shorter prompts transfer better (Philippy)", "setting": f"{r.series}; L in {r.lengths}",
                     "number": f"{_fmt(r.effect, digits=2)} pts per doubling of L [{_fmt(r.ci_low, digits=2)}, "
                               f"{_fmt(r.ci_high, digits=2)}], p={_p(r.p_value)}{_per_seed(r.seed_effects, digits=2)}",
                     "languages": r.languages, "seeds": r.seeds, "verdict": verdict, "why": why})
    if not table.empty:
        shots = table[table["comparison"] == "shots"]
        widest = shots.groupby("series", sort=False).tail(1)  # per series: largest vs smallest
        rows += _paired_rows(widest, "shots", "More samples per class improve transfer (Philippy)", +1)
    for r in reparam.itertuples():
        seeds_ok = r.seeds >= MIN_SEEDS and r.languages >= MIN_LANGUAGES
        if not seeds_ok or math.isnan(r.p_value):
            verdict, why = UNDECIDED, f"{r.seeds} seed(s), {r.languages} languages (needs {MIN_SEEDS}, {MIN_LANGUAGES})"
        else:
            verdict = HOLDS if r.p_value < ALPHA else FAILS
            why = f"Friedman test of per-language effects, p {'<' if r.p_value < ALPHA else '>='} {ALPHA}"
        rows.append({"claim": "MLP reparameterization helps some languages and hurts others (Philippy)",
                     "setting": f"{r.series}: {r.variant} vs none",
                     "number": f"helps {r.helped}, hurts {r.hurt} languages; effect {_fmt(r.effect_mean)} ± "
                               f"{_fmt(r.effect_sd, signed=False)} pts (sd over languages); p={_p(r.p_value)}",
                     "languages": r.languages, "seeds": r.seeds, "verdict": verdict, "why": why})
    tasks = TV.per_task(frame, n_boot)
    pooled = TV.pooled(frame, n_boot)
    for comparison, claim in TASK_CLAIMS.items():
        rows += _task_rows(tasks, pooled, comparison, claim)
    aligned = "Prompt tuning gives better-aligned cross-lingual representations than fine-tuning (Tu)"
    if alignment is not None and not alignment.empty:
        rows += _paired_rows(alignment, "alignment", aligned, +1, unit="pts retrieval of the parallel English "
                             "sentence (last layer)")
    else:
        rows.append({"claim": aligned, "setting": "", "number": "not measured (report with alignment on, from a "
                     "store whose fine-tuned runs keep their weights)", "languages": 0, "seeds": 0,
                     "verdict": UNDECIDED, "why": "not measured"})
    rows += _paired_rows(table, "prompt_vs_head", "An input prompt transfers better than the converged linear probe "
                         "(head only)", +1)
    rows += _paired_rows(table, "variant_vs_head", "One setting changed makes the soft prompt transfer better than the "
                         "converged linear probe (why the prompt loses)", +1)
    return {"verdict": pd.DataFrame(rows), "statistics": table, "length_slopes": slopes,
            "distance_slopes": distances, "reparam": reparam, "stopped_early": S.stopped_early(frame),
            "tasks": tasks, "pooled": pooled}


# claims tested per task (and pooled over tasks) with the method in the claim: tasks_verdict.py
TASK_CLAIMS = {
    "deep_vs_finetune": "Prompt tuning transfers better than fine-tuning (Tu): deep prompt",
    "input_vs_finetune": "Prompt tuning transfers better than fine-tuning (Tu): input prompt",
    "deep_vs_input": "A deep prompt transfers better than an input prompt",
    "deep_vs_head": "A deep prompt transfers better than the converged linear probe (head only)",
}


def _task_rows(tasks: pd.DataFrame, pooled: pd.DataFrame, comparison: str, claim: str) -> list[dict]:
    """Per task setting (`setting` names the task and both methods), then pooled over tasks."""
    out = []
    if not tasks.empty:
        part = tasks[tasks["comparison"] == comparison]
        for i in range(len(part)):  # one row at a time: each task names its own metric
            metric = part["metric"].iloc[i]
            out += _paired_rows(part.iloc[[i]], comparison, claim, +1,
                                unit="pts" if metric == "accuracy" else f"pts of {metric}")
    if not pooled.empty:
        for r in pooled[pooled["comparison"] == comparison].itertuples():
            verdict, why = decide(+1, r.ci_low, r.ci_high, r.seeds, r.languages, r.seeds_agree)
            if verdict != UNDECIDED and r.tasks < 2:
                verdict, why = UNDECIDED, "one task"
            each = ", ".join(f"{TV.task_label(t)} {_fmt(e)}" for t, e in r.per_task.items())
            out.append({"claim": claim, "setting": f"pooled over {r.task_list} ({T.model_label(r.model)}): "
                                                   f"{r.a} vs {r.b}",
                        "number": f"{_fmt(r.effect)} pts (mean of the tasks' effects: {each}) [{_fmt(r.ci_low)}, "
                                  f"{_fmt(r.ci_high)}], languages resampled within tasks{_per_seed(r.seed_effects)}",
                        "languages": r.languages, "seeds": r.seeds, "verdict": verdict, "why": why})
    return out


def _per_task_comparisons(frame: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """`stats.comparisons` task by task (a store of several tasks must not pool their rows), the task named
    in each series when there are several."""
    parts = []
    for task, part in frame.groupby("task", sort=True):
        table = S.comparisons(part, n_boot)
        if frame["task"].nunique() > 1 and not table.empty:
            table["series"] = TV.task_label(task) + ", " + table["series"]
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    frame = T.shown(frame)
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "/") for v in row) + " |")
    return "\n".join(lines) + "\n"


def verdict_markdown(result: dict, store: str) -> str:
    verdict, early = result["verdict"], result["stopped_early"]
    parts = [f"# Verdict: the studies' claims on `{store}`\n",
             f"Effects are in accuracy points on zero-shot languages (per language: mean over seeds), with 95 % "
             f"bootstrap intervals over languages ({S.N_BOOT} draws, seed {S.SEED}) and paired Wilcoxon "
             f"signed-rank p-values across languages. A row is undecided with fewer than {MIN_SEEDS} seeds or "
             f"{MIN_LANGUAGES} languages, when its interval spans zero, or when the seeds' effects (each seed's mean "
             f"over languages, listed as \"per seed\") differ in sign.\n",
             _md_table(verdict[["claim", "setting", "number", "languages", "seeds", "verdict"]]),
             f"\n## Runs stopped too early (best epoch = last, dev loss still down > {S.LATE_GAIN:.0%} over the "
             "last quarter of epochs)\n",
             _md_table(early) if not early.empty else "None: no run was still improving when it stopped.\n"]
    return "\n".join(parts)
