"""The studies' figures (matplotlib, Agg): one function per Study table, each saving one PNG.

Labels say what is measured and in which unit; languages are shown as `code (name)`; every series
has a legend entry; seed spread is drawn as error bars or bands (mean ± std over seeds).
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI toolkit import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .languages import DISTANCES, label as language_label  # noqa: E402
from .tables import Study, freeze_label, held_fixed_text, is_kind, model_label, series_label, shots_label  # noqa: E402

DPI = 110
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}


def styled(fn):
    """Apply STYLE for one figure only: importing this module leaves the caller's matplotlib settings alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


FOOTER_INCHES = 0.32  # the bottom strip that says what a figure held fixed


def _footer(fig) -> float:
    """The footer strip's height as a fraction of the figure (figures lay out above it)."""
    return FOOTER_INCHES / fig.get_figheight()


def _save(fig, path: Path, study: Study | None = None, tight: bool = True) -> Path:
    """tight=False: the figure laid itself out above `_footer(fig)` (bottom legends)."""
    fixed = held_fixed_text(study.config.get("held_fixed") or []) if study is not None else ""
    if tight:
        fig.tight_layout(rect=(0, _footer(fig), 1, 1) if fixed else None)
    if fixed:  # what the figure does not show it holds fixed: say so on the figure itself
        fig.text(0.01, 0.02 / fig.get_figheight(), f"held fixed: {fixed}", fontsize=7, color="#404a5e",
                 wrap=True, va="bottom")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _wrap(text: str) -> str:
    """Series names on tick labels: one part per line instead of slanted text."""
    return text.replace(" · ", "\n")


def _err(values) -> np.ndarray:
    """Std as error bars; a single seed has no spread (NaN -> 0 so matplotlib draws nothing)."""
    return np.nan_to_num(np.asarray(values, dtype=float))


@styled
def plot_mf(study: Study, path: Path) -> Path:
    """Grouped bars: one group per model (· method), MF and no MF side by side."""
    t = study.table.copy()
    t["group"] = [series_label(r, ["model", "method"] if t["method"].nunique() > 1 else ["model"])
                  for _, r in t.iterrows()]
    groups = list(dict.fromkeys(t["group"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 4.2))
    width = 0.38
    for k, (frozen, color) in enumerate([(True, "#1f77b4"), (False, "#ff7f0e")]):
        part = t[t["freeze_model"] == frozen].set_index("group").reindex(groups)
        x = np.arange(len(groups)) + (k - 0.5) * width
        bars = ax.bar(x, part["accuracy_mean"], width, yerr=_err(part["accuracy_std"]), capsize=4,
                      color=color, label=freeze_label(frozen))
        for bar, value in zip(bars, part["accuracy_mean"]):
            if np.isfinite(value):
                ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(np.arange(len(groups)), [_wrap(g) for g in groups])
    ax.set_ylabel("zero-shot accuracy (mean over target languages)")
    top = float(np.nanmax(t["accuracy_mean"] + _err(t["accuracy_std"])))
    ax.set_ylim(0, max(0.1, top * 1.25))  # headroom for the legend above the bars
    ax.set_title(study.title)
    ax.legend(loc="upper center", ncol=2, fontsize=9)
    return _save(fig, path, study)


def _lines(study: Study, path: Path, x_col: str, xlabel: str, categorical: bool, log: bool) -> Path:
    t = study.table.copy()
    cols = [c for c in ("model", "method", "freeze_model") if c in t.columns]
    t["series"] = [series_label(r, cols) for _, r in t.iterrows()]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if categorical:  # samples per class: 8, 32, ..., 'all' (null) last
        order = sorted(t[x_col].drop_duplicates(), key=lambda v: np.inf if pd.isna(v) else v)
        pos = {shots_label(v): i for i, v in enumerate(order)}
        t["x"] = [pos[shots_label(v)] for v in t[x_col]]
        ax.set_xticks(range(len(order)), [shots_label(v) for v in order])
    else:
        t["x"] = t[x_col].astype(float)
        if log:
            ax.set_xscale("log")
        values = sorted(t["x"].unique())
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.minorticks_off()
    for name, part in t.groupby("series", sort=True):
        part = part.sort_values("x")
        mean, std = part["accuracy_mean"].to_numpy(float), _err(part["accuracy_std"])
        line, = ax.plot(part["x"], mean, marker="o", label=f"{name} ({int(part['seeds'].max())} seeds)")
        ax.fill_between(part["x"], mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("zero-shot accuracy (mean over target languages)")
    ax.set_title(study.title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, study)


@styled
def plot_shots(study: Study, path: Path) -> Path:
    return _lines(study, path, "shots", "training samples per class", categorical=True, log=False)


@styled
def plot_length(study: Study, path: Path) -> Path:
    lengths = study.table["prompt_length"].astype(float)
    return _lines(study, path, "prompt_length", "prompt length (tokens)", categorical=False,
                  log=lengths.max() / max(lengths.min(), 1) >= 10)


@styled
def plot_reparam(study: Study, path: Path) -> Path:
    """Horizontal bars per language, sorted by impact; one panel per model/freezing/variant."""
    t = study.table
    panels = list(t.groupby(["model", "freeze_model", "reparam"], sort=True))
    n_lang = t.groupby(["model", "freeze_model", "reparam"])["language"].nunique().max()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), max(3.5, 0.22 * n_lang + 1.5)),
                             squeeze=False)
    for ax, ((model, frozen, variant), part) in zip(axes[0], panels):
        part = part.sort_values("impact_mean")
        y = np.arange(len(part))
        colors = np.where(part["impact_mean"] >= 0, "#2ca02c", "#d62728")
        ax.barh(y, part["impact_mean"], xerr=_err(part["impact_std"]), color=colors, capsize=2)
        ax.set_yticks(y, [language_label(c) for c in part["language"]], fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"relative change of accuracy, {variant} vs none (%)")
        ax.set_title(f"{model_label(model)} · {freeze_label(frozen)}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#2ca02c", "#d62728")]
    fig.legend(handles, ["reparameterization helps", "reparameterization hurts"], loc="lower center",
               ncol=2, fontsize=8, bbox_to_anchor=(0.5, _footer(fig)))
    fig.suptitle(study.title)
    fig.tight_layout(rect=(0, _footer(fig) + 0.4 / fig.get_figheight(), 1, 1))
    return _save(fig, path, study, tight=False)


@styled
def plot_methods(study: Study, path: Path) -> Path:
    """Per task: scatter of fine-tuning (x) vs prompt tuning (y) accuracy per language."""
    t = study.table
    tasks = sorted(t["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 5.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = t[t["task"] == task]
        tuned = is_kind(part["method"], "finetune")
        for (model, method), prm in part[~tuned].groupby(["model", "method"]):
            ft = part[(part["model"] == model) & tuned]
            both = prm.merge(ft, on="language", suffixes=("", "_ft"))
            if both.empty:
                continue
            ax.errorbar(both["accuracy_ft"], both["accuracy"], xerr=_err(both["accuracy_std_ft"]),
                        yerr=_err(both["accuracy_std"]), fmt="o", ms=4, alpha=0.8, capsize=2,
                        label=f"{model_label(model)} · {method.replace('_', ' ')} vs fine-tuning")
            both = both.assign(gap=both["accuracy"] - both["accuracy_ft"]).sort_values("gap")
            for _, r in pd.concat([both.head(1), both.tail(1)]).drop_duplicates("language").iterrows():
                ax.annotate(language_label(r["language"]), (r["accuracy_ft"], r["accuracy"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        values = pd.concat([part["accuracy"] - part["accuracy_std"].fillna(0),
                            part["accuracy"] + part["accuracy_std"].fillna(0)])
        lo, hi = max(0.0, values.min() - 0.05), min(1.0, values.max() + 0.05)  # zoom on the data
        ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label="equal accuracy")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("fine-tuning accuracy")
        ax.set_ylabel("prompt-tuning accuracy (model frozen)")
        ax.set_title(f"task {task}")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(study.title)
    return _save(fig, path, study)


@styled
def plot_distance(study: Study, path: Path) -> Path:
    """Accuracy per language vs each URIEL distance; one colour per model/method/freezing, with the
    least-squares line and Pearson r in the legend."""
    t = study.table
    series = [name for name, part in t.groupby("series", sort=True) if part["accuracy"].notna().sum() >= 2]
    colors = {name: plt.get_cmap("tab10")(k % 10) for k, name in enumerate(series)}
    fig, axes = plt.subplots(1, len(DISTANCES), figsize=(4.3 * len(DISTANCES), 4.3 + 0.25 * len(series)),
                             squeeze=False)
    for ax, dist in zip(axes[0], DISTANCES):
        notes = []
        for name in series:
            ok = t[t["series"] == name][[dist, "accuracy"]].dropna()
            if len(ok) < 2:
                continue
            ax.scatter(ok[dist], ok["accuracy"], s=14, alpha=0.7, color=colors[name], label=name)
            if ok[dist].std() > 0:
                r = np.corrcoef(ok[dist], ok["accuracy"])[0, 1]
                slope, icept = np.polyfit(ok[dist], ok["accuracy"], 1)
                xs = np.linspace(ok[dist].min(), ok[dist].max(), 2)
                ax.plot(xs, slope * xs + icept, color=colors[name], lw=1.2)
                notes.append((name, f"r={r:.2f}  slope={slope:.2f}"))
        for k, (name, text) in enumerate(notes):  # r per series, in its colour, instead of a legend
            ax.text(0.98, 0.98 - 0.07 * k, text, transform=ax.transAxes, ha="right", va="top", fontsize=7.5,
                    color=colors[name])
        ax.set_xlabel(f"{dist} distance to the training language")
        ax.set_ylabel("zero-shot accuracy")
        ax.set_title(dist)
    handles = [plt.Line2D([], [], marker="o", ls="-", color=colors[n]) for n in series]
    fig.legend(handles, series, loc="lower center", ncol=min(2, len(series)), fontsize=8,
               bbox_to_anchor=(0.5, _footer(fig)))
    fig.suptitle(study.title)
    fig.tight_layout(rect=(0, _footer(fig) + 0.06 * ((len(series) + 1) // 2), 1, 1))
    return _save(fig, path, study, tight=False)


@styled
def plot_seen(study: Study, path: Path) -> Path:
    """Mean accuracy of languages seen vs unseen in pretraining, per model and freezing."""
    t = study.table
    groups = list(dict.fromkeys(t["series"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(groups) + 2), 4.2))
    width = 0.38
    for k, (seen, color) in enumerate([(True, "#9467bd"), (False, "#8c564b")]):
        part = t[t["seen"] == seen].set_index("series").reindex(groups)
        ax.bar(np.arange(len(groups)) + (k - 0.5) * width, part["mean"], width, yerr=_err(part["std"]),
               capsize=4, color=color,
               label=("seen" if seen else "unseen") + " in pretraining (std over languages)")
    ax.set_xticks(np.arange(len(groups)), [_wrap(g) for g in groups], fontsize=8)
    ax.set_ylabel("zero-shot accuracy (mean over languages)")
    ax.set_ylim(0, max(0.1, float(np.nanmax(t["mean"] + _err(t["std"]))) * 1.25))
    ax.set_title(study.title)
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return _save(fig, path, study)


PLOTTERS = {"mf_vs_no_mf": plot_mf, "shots": plot_shots, "prompt_length": plot_length,
            "reparam_impact": plot_reparam, "prompt_vs_finetune": plot_methods,
            "accuracy_vs_distance": plot_distance, "seen_vs_unseen": plot_seen}
