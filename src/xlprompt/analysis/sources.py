"""Beyond English-only (issue 30): English-only transfer vs several source languages vs English plus K
target examples per class, per method and language group, from a store of grids/findings_sources_e5.toml.

Rows here are every evaluated language, trained on or not: a target language's few examples are the
setting under test, so its accuracy is what the study compares (the report's zero-shot tables exclude
those languages). Groups: the languages XGLM's or BLOOM's pretraining covers, the other study languages,
and the worst languages under English-only transfer. Each setting is compared with English-only of the
same method, and the best setting with the converged probe trained on the same examples, with the
studies' statistics (`stats.paired`: per language the seed mean, languages resampled; `decide`: 3 seeds,
the interval excludes zero, every seed agrees).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import stats as S
from . import tables as T
from .languages import pretraining_list
from .verdict import decide

ENGLISH, SOURCES = "English only", "several sources"


def seen_languages() -> set[str]:
    """SIB-200 codes in XGLM's or BLOOM's pretraining lists (analysis/resources)."""
    return {code for family in ("xglm", "bloom") for entry in pretraining_list(family)["languages"]
            for code in entry["flores"]}


def worst_languages(frame: pd.DataFrame, n: int = 20) -> list[str]:
    """The `n` languages the English-only input prompt transfers to worst (seed means), in this store."""
    rows = frame.assign(setting=setting_of(frame))
    english = rows[(rows["setting"] == ENGLISH) & T.is_kind(rows["method"], "input") & ~T.trained_on(rows)]
    return list(english.groupby("language")["accuracy"].mean().sort_values(kind="stable").index[:n])


def language_groups(study: list[str], worst: list[str]) -> dict[str, list[str]]:
    """The study's languages, those of them XGLM/BLOOM saw, the others, and the worst under English only."""
    seen = seen_languages()
    return {"study languages": sorted(study), "seen (XGLM/BLOOM)": sorted(c for c in study if c in seen),
            "other study languages": sorted(c for c in study if c not in seen),
            "worst under English only": sorted(worst)}


def setting_of(frame: pd.DataFrame) -> pd.Series:
    """English only / several sources / English + K per class, from the runs' declared settings."""
    out = []
    for sources, k in zip(frame["train_language"].astype(str), frame.get("target_shots", pd.Series(
            [None] * len(frame), index=frame.index))):
        if not pd.isna(k):
            out.append(f"English + {int(k)} per class")
        else:
            out.append(SOURCES if "," in sources else ENGLISH)
    return pd.Series(out, index=frame.index)


def k_of(setting: str) -> float:
    if setting == ENGLISH:
        return 0.0
    return float(setting.split("+ ")[1].split(" ")[0]) if "+" in setting else float("nan")


def gains(frame: pd.DataFrame, groups: dict[str, list[str]], n_boot: int = S.N_BOOT) -> pd.DataFrame:
    """Per method, setting and group: accuracy, and the gain over English only with its interval."""
    rows = frame.assign(setting=setting_of(frame))
    rows = rows[rows["split"] == "test"] if "split" in rows else rows
    out = []
    for method, part in rows.groupby("method", sort=True):
        base = part[part["setting"] == ENGLISH]
        for setting, arm_rows in part.groupby("setting", sort=False):
            for group, codes in groups.items():
                a, b = arm_rows[arm_rows["language"].isin(codes)], base[base["language"].isin(codes)]
                if a.empty:
                    continue
                one = S.arm(a)
                row = {"method": T.method_label(method), "setting": setting, "k": k_of(setting), "group": group,
                       "accuracy": one["mean"], "seeds": one["seeds"], "languages": int(len(one["per_language"]))}
                if setting != ENGLISH and not b.empty:
                    a2, b2 = S.matched_seeds(a, b)
                    paired = S.paired(S.arm(a2), S.arm(b2), n_boot)
                    effects = S.seed_effects(a2, b2)
                    verdict, why = decide(+1, paired["ci_low"], paired["ci_high"], min(paired["seeds_a"],
                                          paired["seeds_b"]), paired["languages"], S.seeds_agree(effects))
                    row.update(gain=paired["effect"], ci_low=paired["ci_low"], ci_high=paired["ci_high"],
                               p_value=paired["p_value"], seed_effects=";".join(f"{e:+.4f}" for e in effects),
                               verdict=verdict, why=why)
                elif setting == ENGLISH:
                    lo, hi = S.bootstrap_ci(one["per_language"].to_numpy(), n_boot)
                    row.update(accuracy_ci_low=lo, accuracy_ci_high=hi)
                out.append(row)
    return pd.DataFrame(out)


def against_probe(frame: pd.DataFrame, group: str, codes: list[str], n_boot: int = S.N_BOOT) -> list[dict]:
    """Each setting's prompt (input prompt, MF) against the probe trained on the same examples."""
    rows = frame.assign(setting=setting_of(frame))
    rows = rows[rows["language"].isin(codes)]
    prompt, probe = rows[T.is_kind(rows["method"], "input")], rows[T.is_kind(rows["method"], "head")]
    out = []
    for setting, a in prompt.groupby("setting", sort=False):
        b = probe[probe["setting"] == setting]
        if b.empty:
            continue
        a2, b2 = S.matched_seeds(a, b)
        paired, effects = S.paired(S.arm(a2), S.arm(b2), n_boot), S.seed_effects(a2, b2)
        verdict, why = decide(+1, paired["ci_low"], paired["ci_high"], min(paired["seeds_a"], paired["seeds_b"]),
                              paired["languages"], S.seeds_agree(effects))
        out.append({"setting": setting, "group": group, "prompt": paired["mean_a"], "probe": paired["mean_b"],
                    "gain": paired["effect"], "ci_low": paired["ci_low"], "ci_high": paired["ci_high"],
                    "verdict": verdict, "why": why})
    return out


def plot_k(table: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs K target examples per class (0: English only), a panel per method, a line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = table[table["k"].notna()].sort_values("k")
    methods = list(dict.fromkeys(curves["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4.2), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for group, part in curves[curves["method"] == method].groupby("group", sort=False):
            base = part[part["k"] == 0]["accuracy"].iloc[0] if (part["k"] == 0).any() else np.nan
            low = np.where(part["k"] == 0, part["accuracy"], base + part["ci_low"].fillna(0))
            high = np.where(part["k"] == 0, part["accuracy"], base + part["ci_high"].fillna(0))
            ax.plot(part["k"], part["accuracy"], marker="o", label=group)
            ax.fill_between(part["k"], low, high, alpha=0.15)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks([0, 1, 2, 4, 8], ["0", "1", "2", "4", "8"])
        ax.set_xlabel("target examples per class (0: English only)")
        ax.set_title(method)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean over languages and seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.text(0.01, 0.01, "band: 95% interval of the gain over English only (languages resampled), drawn "
             "around English only's accuracy plus the gain", fontsize=7, color="#404a5e")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
