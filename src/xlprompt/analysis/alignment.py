"""Figures of representation alignment (Tu et al. 2022): cosine and retrieval per layer, and the last
layer's decision boundaries. The measurement itself is `xlprompt.evaluation.representations`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .figures import DPI, plt, styled
from .languages import label as language_label

# ------------------------------------------------------------------------------------ figures


@styled
def plot_layers(scores: pd.DataFrame, path: Path) -> Path:
    """Cosine to the pivot and retrieval accuracy per layer, averaged over languages; one line per
    run and condition."""
    mean = scores.groupby(["run", "condition", "layer"])[["cosine", "retrieval"]].mean().reset_index()
    groups = list(mean.groupby(["run", "condition"], sort=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3 + 0.22 * len(groups)))
    for (run, cond), part in groups:
        for ax, col in zip(axes, ("cosine", "retrieval")):
            ax.plot(part["layer"], part[col], marker="o", ms=3, label=f"{run} · {cond}")
    axes[0].set_ylabel("mean cosine to the parallel English sentence")
    axes[1].set_ylabel("retrieval accuracy of the parallel English sentence")
    layers = sorted(mean["layer"].unique())
    for ax in axes:
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_xticks(layers if len(layers) <= 13 else layers[::2])
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8)
    n = scores["language"].nunique()
    fig.suptitle(f"Cross-lingual alignment of sentence representations per layer (mean over {n} "
                 f"language{'s' if n != 1 else ''})")
    fig.tight_layout(rect=(0, 0.055 * ((len(groups) + 1) // 2) + 0.02, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@styled
def plot_boundaries(last: dict, labels: dict, label_names: list[str], title: str, path: Path) -> pd.DataFrame:
    """2-D PCA of last-layer representations coloured by label: rows = conditions, columns = languages.
    One PCA per condition, fitted on all its languages, so panels in a row share axes. Returns the
    projected points (the figure's table)."""
    from sklearn.decomposition import PCA

    conds = list(last)
    codes = list(next(iter(last.values())))
    fig, axes = plt.subplots(len(conds), len(codes), figsize=(3.2 * len(codes), 3.0 * len(conds) + 0.6),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    points = []
    for i, cond in enumerate(conds):
        stacked = np.concatenate([last[cond][c] for c in codes])
        proj = PCA(n_components=2, random_state=0).fit(stacked)
        for j, code in enumerate(codes):
            ax = axes[i][j]
            xy = proj.transform(last[cond][code])
            points.append(pd.DataFrame({"condition": cond, "language": code, "sentence": range(len(xy)),
                                        "label": [label_names[k] for k in labels[code]],
                                        "pc1": xy[:, 0], "pc2": xy[:, 1]}))
            for k, name in enumerate(label_names):
                sel = labels[code] == k
                ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(k % 10), label=name)
            ax.set_title(f"{language_label(code)}\n{cond}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(7, len(names)), fontsize=8, title="label")
    fig.suptitle(title + " — PCA of last-layer sentence representations")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return pd.concat(points, ignore_index=True)
