"""Statistics for every comparison the studies make, computed from the store.

Each comparison pairs two arms (e.g. MF and no MF at 8 samples per class) that differ in one setting,
the others held fixed as the figures hold them (`tables.fix_other_axes`). Where the two arms share seeds,
only the shared seeds enter (`matched_seeds`). Per arm and zero-shot language, accuracy is first averaged
over seeds; the effect is the mean over the languages both arms
have of (A - B). Reported: that effect with a 95 % percentile bootstrap interval (languages resampled,
`N_BOOT` draws, fixed seed), each arm's spread over seeds (std, ddof=1, of its mean over languages), and
a paired Wilcoxon signed-rank test across languages on the per-language seed means (scipy; zero
differences dropped). Prompt length is also summarised as one slope: per language, the least-squares
slope of accuracy on log2(length) ("per doubling"), averaged over languages, with the same interval and
test (Wilcoxon of the slopes against 0). The distance analysis regresses per-language accuracy on URIEL
distance for the frozen and the unfrozen arm over the same languages and bootstraps the difference of
the two slopes (frozen - unfrozen: positive = freezing flattens a negative slope).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..experiments.store import setting_columns
from . import tables as T
from .languages import DISTANCES

N_BOOT = 10_000
SEED = 0
LEVEL = 0.95


# -------------------------------------------------------------------------------------- the numbers


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean, resampling the values (languages) with replacement."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (NaN with fewer than 2 non-zero)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d) & (d != 0)]
    if len(d) < 2:
        return float("nan")
    return float(stats.wilcoxon(d).pvalue)


def arm(rows: pd.DataFrame) -> dict:
    """One configuration's runs: per-language seed means, seeds, and the spread over seeds."""
    per_run = rows.groupby("seed")["accuracy"].mean()
    return {"per_language": rows.groupby("language")["accuracy"].mean(),
            "seeds": int(rows["seed"].nunique()), "mean": float(rows.groupby("language")["accuracy"].mean().mean()),
            "seed_std": float(per_run.std(ddof=1)) if len(per_run) > 1 else float("nan")}


def paired(a: dict, b: dict, n_boot: int = N_BOOT) -> dict:
    """Effect (A - B, mean over common languages), its interval and the Wilcoxon p-value."""
    common = a["per_language"].index.intersection(b["per_language"].index)
    d = (a["per_language"][common] - b["per_language"][common]).to_numpy(dtype=float)
    lo, hi = bootstrap_ci(d, n_boot)
    return {"languages": int(len(common)), "seeds_a": a["seeds"], "seeds_b": b["seeds"],
            "mean_a": float(a["per_language"][common].mean()) if len(common) else float("nan"),
            "mean_b": float(b["per_language"][common].mean()) if len(common) else float("nan"),
            "seed_std_a": a["seed_std"], "seed_std_b": b["seed_std"],
            "effect": float(d.mean()) if len(d) else float("nan"), "ci_low": lo, "ci_high": hi,
            "p_value": wilcoxon_p(d), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def slope(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc ** 2).sum())


def slope_difference(distance, frozen, unfrozen, n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """Slopes of accuracy on distance for two arms over the same languages, and a bootstrap interval on
    their difference (frozen - unfrozen), resampling languages."""
    x, f, u = (np.asarray(v, dtype=float) for v in (distance, frozen, unfrozen))
    ok = np.isfinite(x) & np.isfinite(f) & np.isfinite(u)
    x, f, u = x[ok], f[ok], u[ok]
    out = {"languages": int(len(x)), "slope_frozen": slope(x, f), "slope_unfrozen": slope(x, u)}
    out["effect"] = out["slope_frozen"] - out["slope_unfrozen"]
    if len(x) < 3 or n_boot < 1:
        return {**out, "ci_low": float("nan"), "ci_high": float("nan")}
    rng = np.random.default_rng(seed)
    diffs = []
    for idx in rng.integers(0, len(x), (n_boot, len(x))):
        diffs.append(slope(x[idx], f[idx]) - slope(x[idx], u[idx]))
    diffs = np.asarray(diffs)
    diffs = diffs[np.isfinite(diffs)]
    tail = (1 - LEVEL) / 2 * 100
    return {**out, "ci_low": float(np.percentile(diffs, tail)), "ci_high": float(np.percentile(diffs, 100 - tail))}


# ---------------------------------------------------------------------------------- the comparisons


def _groups(rows: pd.DataFrame, vary: list[str], keep: list[str]):
    """(keep values, {vary value: arm rows}) per keep group, other axes held fixed as the figures do."""
    if rows.empty:
        return
    unfixed = rows
    rows, _ = T.fix_other_axes(rows, vary, keep, min_values=2)
    if vary == ["shots", "epochs"]:
        rows = T.one_epochs_per_shots(rows, keep, counts=unfixed)
    for key, part in rows.groupby(keep, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(keep, key)), {v: p for v, p in part.groupby(vary[0], dropna=False, sort=True)}


def _series(keys: dict) -> str:
    return T.series_label(keys, list(keys))


def _shots_order(value) -> float:
    return np.inf if value is None or pd.isna(value) else float(value)


def matched_seeds(a_rows: pd.DataFrame, b_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both arms cut to the seeds they share, when they share any: an extra seed on one side only would
    move that side's seed mean and show up as an effect (seed 1 of one arm against seed 0 of the other)."""
    cut = matched_arms({"a": a_rows, "b": b_rows})
    return cut["a"], cut["b"]


def matched_arms(arms: dict) -> dict:
    """Every arm cut to the seeds all of them share (`matched_seeds` for more than two arms), when they
    share any."""
    seed_sets = [set(rows["seed"].dropna()) for rows in arms.values()]
    common = set.intersection(*seed_sets) if seed_sets else set()
    if not common:
        return arms
    return {k: rows[rows["seed"].isin(common)] for k, rows in arms.items()}


def seed_effects(a_rows: pd.DataFrame, b_rows: pd.DataFrame) -> list[float]:
    """Per seed both arms ran: the mean over their common languages of A - B. The bootstrap interval
    resamples languages only, so it cannot see seeds that disagree; these can."""
    out = []
    for seed in sorted(set(a_rows["seed"].dropna()) & set(b_rows["seed"].dropna())):
        a = a_rows[a_rows["seed"] == seed].groupby("language")["accuracy"].mean()
        b = b_rows[b_rows["seed"] == seed].groupby("language")["accuracy"].mean()
        d = (a - b).dropna()
        if len(d):
            out.append(float(d.mean()))
    return out


def seeds_agree(effects: list[float]):
    """True when every seed's effect has the same sign, False when they differ, None under 2 seeds."""
    if len(effects) < 2:
        return None
    return bool(all(e > 0 for e in effects) or all(e < 0 for e in effects))


def _seed_columns(effects: list[float]) -> dict:
    return {"seed_effects": ";".join(f"{e:+.4f}" for e in effects), "seeds_agree": seeds_agree(effects)}


def _row(comparison: str, keys: dict, a_label: str, b_label: str, a_rows, b_rows, n_boot: int) -> dict:
    a_rows, b_rows = matched_seeds(a_rows, b_rows)
    return {"comparison": comparison, "series": _series(keys), **{f"key_{k}": T._plain(v) for k, v in keys.items()},
            "a": a_label, "b": b_label, **paired(arm(a_rows), arm(b_rows), n_boot),
            **_seed_columns(seed_effects(a_rows, b_rows))}


def comparisons(frame: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per paired comparison in the store (columns: comparison, series, a, b, languages, seeds,
    means, seed spreads, effect, ci_low, ci_high, p_value, wins, losses)."""
    rows = T.transfer_rows(frame)
    prompts = rows[rows["method"].isin(T.prompt_methods())]
    out = []
    # MF vs no MF, per model / method / samples per class
    for keys, arms in _groups(prompts, ["freeze_model"], ["model", "method", "shots"]):
        if True in arms and False in arms:
            out.append(_row("mf", keys, "MF", "no MF", arms[True], arms[False], n_boot))
    # samples per class: each step up, and the largest vs the smallest (epochs may grow as shots shrink)
    for keys, arms in _groups(prompts, ["shots", "epochs"], ["model", "method", "freeze_model"]):
        values = sorted(arms, key=_shots_order)
        pairs = list(zip(values[1:], values[:-1])) + ([(values[-1], values[0])] if len(values) > 2 else [])
        for hi, lo in pairs:
            out.append(_row("shots", keys, f"{T.shots_label(hi)} per class", f"{T.shots_label(lo)} per class",
                            arms[hi], arms[lo], n_boot))
    # prompt length: each length vs the next shorter one
    for keys, arms in _groups(prompts, ["prompt_length"], ["model", "method", "freeze_model"]):
        values = sorted(arms)
        for long, short in zip(values[1:], values[:-1]):
            out.append(_row("length", keys, f"L={int(long)}", f"L={int(short)}", arms[long], arms[short], n_boot))
    # reparameterization vs none
    inputs = prompts[T.is_kind(prompts["method"], "input")]
    for keys, arms in _groups(inputs, ["reparam"], ["model", "freeze_model"]):
        for variant in sorted(set(arms) - {"none"}):
            if "none" in arms:
                out.append(_row("reparam", keys, variant, "none", arms[variant], arms["none"], n_boot))
    # the head initialised at the converged probe vs at random (issue 15's "why")
    for keys, arms in (_groups(inputs, ["head_init"], ["model", "freeze_model"]) if "head_init" in inputs else ()):
        if "probe" in arms and "random" in arms:
            out.append(_row("head_init", keys, "head from probe", "random head", arms["probe"], arms["random"],
                            n_boot))
    # deep vs input prompt (frozen)
    for keys, arms in _groups(prompts[prompts["freeze_model"]], ["method"], ["model", "shots"]):
        kinds = {T.method_kind(m): m for m in arms}
        if {"prefix", "input"} <= set(kinds):
            out.append(_row("deep_vs_input", keys, T.method_label(kinds["prefix"]), T.method_label(kinds["input"]),
                            arms[kinds["prefix"]], arms[kinds["input"]], n_boot))
    out += _method_rows(rows, n_boot)
    out += variant_rows(rows, n_boot)
    return pd.DataFrame(out)


def method_arms(rows: pd.DataFrame) -> dict:
    """{(model, shots): {"prompt" | "finetune" | "head": rows}}: per method the setting covering the most
    sample sizes (for prompts: frozen input prompts, e.g. L=10 without reparameterization)."""
    pick = {"prompt": rows[T.is_kind(rows["method"], "input") & rows["freeze_model"]],
            "finetune": rows[T.is_kind(rows["method"], "finetune")], "head": rows[T.is_kind(rows["method"], "head")]}
    out: dict = {}
    for name, sub in pick.items():
        if sub.empty:
            continue
        fixed, _ = T.fix_other_axes(sub, ["shots", "epochs"], ["model"])
        sub = T.one_epochs_per_shots(fixed, ["model"], counts=sub)
        for (model, shots), part in sub.groupby(["model", "shots"], dropna=False, sort=True):
            out.setdefault((model, None if pd.isna(shots) else int(shots)), {})[name] = part
    return out


def _method_rows(rows: pd.DataFrame, n_boot: int) -> list[dict]:
    out = []
    labels = {"prompt": "input prompt (MF)", "finetune": "fine-tuning", "head": "head only"}
    for (model, shots), arms in sorted(method_arms(rows).items(), key=lambda kv: (kv[0][0], _shots_order(kv[0][1]))):
        keys = {"model": model, "shots": shots}
        for a, b in (("prompt", "finetune"), ("prompt", "head"), ("finetune", "head")):
            if a in arms and b in arms:
                out.append(_row(f"{a}_vs_{b}", keys, labels[a], labels[b], arms[a], arms[b], n_boot))
    return out


def why_settings() -> list[str]:
    """The settings declared `why=True`: what the variant rows change one at a time (issue 15: why the
    prompt loses to the probe)."""
    return [k for k, s in setting_columns().items() if s.why]



def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and a == b)


def variant_rows(rows: pd.DataFrame, n_boot: int = N_BOOT) -> list[dict]:
    """Frozen input prompts that differ from the method comparison's prompt arm in exactly one of
    `why_settings()` at the same model and samples per class (fewer epochs, another LR for the prompt or the head,
    an MLP, a head started at the probe or decayed), each against that prompt ("variant_vs_prompt") and against the head-only
    probe ("variant_vs_head")."""
    prompts = rows[T.is_kind(rows["method"], "input") & rows["freeze_model"]]
    settings = [c for c in why_settings() if c in rows.columns]
    held = [a for a in T.axes() if a in rows.columns and a not in (*settings, "model", "method", "shots", "freeze_model")]
    out = []
    for (model, shots), arms in sorted(method_arms(rows).items(), key=lambda kv: (kv[0][0], _shots_order(kv[0][1]))):
        base = arms.get("prompt")
        if base is None or len(base[settings + held].drop_duplicates()) != 1:
            continue
        ref = base.iloc[0]
        same = prompts[(prompts["model"] == model)
                       & (prompts["shots"].isna() if shots is None else prompts["shots"] == shots)]
        same = same[[all(_same(v, ref[a]) for a, v in zip(held, vals)) for vals in same[held].itertuples(index=False)]]
        keys = {"model": model, "shots": shots}
        for values, part in same.groupby(settings, dropna=False, sort=True):
            changed = [(a, v) for a, v in zip(settings, values) if not _same(v, ref[a])]
            if len(changed) != 1:
                continue
            (axis, value), = changed
            label = f"input prompt (MF), {axis}={T._plain(value)}"
            out.append(_row("variant_vs_prompt", keys, label, f"input prompt (MF), {axis}={T._plain(ref[axis])}",
                            part, base, n_boot))
            if "head" in arms:
                out.append(_row("variant_vs_head", keys, label, "head only", part, arms["head"], n_boot))
    return out


def _language_slopes(arms: dict) -> tuple[np.ndarray, list[int]]:
    """Per language (present at every length): the slope of accuracy on log2(L); and the lengths."""
    acc = pd.DataFrame({int(L): arm(r)["per_language"] for L, r in arms.items()}).dropna()
    x = np.log2(np.asarray(acc.columns, dtype=float))
    return np.array([slope(x, row) for row in acc.to_numpy()]), list(map(int, acc.columns))


def length_slopes(frame: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per series: the mean over languages of the per-language slope of accuracy on log2(prompt length)."""
    prompts = T.transfer_rows(frame)
    prompts = prompts[prompts["method"].isin(T.prompt_methods())]
    out = []
    for keys, arms in _groups(prompts, ["prompt_length"], ["model", "method", "freeze_model"]):
        if len(arms) < 2:
            continue
        arms = matched_arms(arms)
        slopes, lengths = _language_slopes(arms)
        lo, hi = bootstrap_ci(slopes, n_boot)
        seeds = sorted(set.intersection(*(set(r["seed"].dropna()) for r in arms.values())))
        per_seed = [_language_slopes({L: r[r["seed"] == s] for L, r in arms.items()})[0] for s in seeds]
        out.append({"comparison": "length_slope", "series": _series(keys), "lengths": lengths,
                    "languages": len(slopes), "seeds": min(arm(r)["seeds"] for r in arms.values()),
                    "effect": float(slopes.mean()) if len(slopes) else float("nan"), "ci_low": lo, "ci_high": hi,
                    "p_value": wilcoxon_p(slopes),
                    **_seed_columns([float(p.mean()) for p in per_seed if len(p)])})
    return pd.DataFrame(out)


def _with_distances(frozen: pd.Series, unfrozen: pd.Series, langs: pd.DataFrame) -> pd.DataFrame:
    both = pd.DataFrame({"frozen": frozen, "unfrozen": unfrozen}).dropna()
    return both.merge(langs.set_index("language")[list(DISTANCES)], left_index=True, right_index=True, how="left")


def distance_slopes(frame: pd.DataFrame, langs: pd.DataFrame, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per MF comparison and URIEL distance: slopes of accuracy on distance, frozen vs unfrozen, and the
    bootstrap interval of their difference."""
    rows = T.transfer_rows(frame)
    prompts = rows[rows["method"].isin(T.prompt_methods())]
    out = []
    for keys, arms in _groups(prompts, ["freeze_model"], ["model", "method", "shots"]):
        if not (True in arms and False in arms):
            continue
        f_rows, u_rows = matched_seeds(arms[True], arms[False])
        frozen, unfrozen = arm(f_rows), arm(u_rows)
        both = _with_distances(frozen["per_language"], unfrozen["per_language"], langs)
        seeds = sorted(set(f_rows["seed"].dropna()) & set(u_rows["seed"].dropna()))
        per_seed = [_with_distances(arm(f_rows[f_rows["seed"] == s])["per_language"],
                                    arm(u_rows[u_rows["seed"] == s])["per_language"], langs) for s in seeds]
        for dist in DISTANCES:
            effects = [slope_difference(p[dist], p["frozen"], p["unfrozen"], n_boot=0)["effect"] for p in per_seed]
            out.append({"comparison": "distance_slope", "series": _series(keys), "distance": dist,
                        "seeds": min(frozen["seeds"], unfrozen["seeds"]),
                        **slope_difference(both[dist], both["frozen"], both["unfrozen"], n_boot),
                        **_seed_columns([e for e in effects if np.isfinite(e)])})
    return pd.DataFrame(out)


LATE_GAIN = 0.05  # a dev loss still falling by more than 5 % over the last quarter of epochs


def stopped_early(frame: pd.DataFrame, late_gain: float = LATE_GAIN) -> pd.DataFrame:
    """Runs whose best epoch was their last one (of more than one) while the dev loss was still falling by
    more than `late_gain` (relative) over the last quarter of the epochs: they had not converged. With the
    learning rate decaying to 0 the dev loss often creeps down to the very last epoch of a converged run,
    so best = last alone is no sign of stopping early; runs without the curve's gain count as stopped."""
    runs = frame.drop_duplicates("run_id")
    runs = runs[runs["best_epoch"].notna() & runs["epochs"].notna() & (runs["epochs"] > 1)]
    late = runs[runs["best_epoch"] == runs["epochs"]]
    if "late_dev_gain" in late.columns:
        late = late[late["late_dev_gain"].isna() | (late["late_dev_gain"] > late_gain)]
    cols = [c for c in ("run_id", "method", "model", "shots", "prompt_length", "freeze_model", "reparam", "seed",
                        "epochs", "best_epoch", "late_dev_gain") if c in late.columns]
    return late[cols].reset_index(drop=True)
