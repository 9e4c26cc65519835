"""How large each run's linear head ended, per setting: the "why" page's look at regularisation.

    python scripts/head_norms.py STORE [--shots all|N ...] [--out table.csv]

For every done run with a linear head (`head.safetensors`, `linear.weight`), the Frobenius norm of the
weight matrix; then the mean and spread over seeds per setting (the store's axes). The converged probe
is L2-regularised; a prompt's head is trained by AdamW with no decay unless asked, so this says how far
the two heads are apart in size. Reads the store (its table is rebuilt if stale, as `xlprompt report`
does); writes the table (CSV) atomically when --out is given.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from xlprompt.core import io
from xlprompt.analysis import tables as T
from xlprompt.experiments.store import load_store, runs_dir


def head_norm(run_dir: Path) -> float | None:
    path = run_dir / "head.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        if "linear.weight" not in f.keys():
            return None  # per-token or span heads: not a sentence classifier's linear head
        return float(f.get_tensor("linear.weight").norm())


def norms_table(store: Path, shots: list[str] | None = None) -> pd.DataFrame:
    rows = load_store(store)
    runs = rows.drop_duplicates("run_id").copy()
    if shots:
        wanted = {None if s == "all" else int(s) for s in shots}
        runs = runs[runs["shots"].apply(lambda s: (None if pd.isna(s) else int(s)) in wanted)]
    runs["head_norm"] = [head_norm(runs_dir(store) / rid) for rid in runs["run_id"]]
    runs = runs.dropna(subset=["head_norm"])
    axes = [a for a in T.AXES if a in runs.columns and runs[a].nunique(dropna=False) > 1]
    table = (runs.groupby(axes, sort=True, dropna=False)["head_norm"]  # a probe has no prompt length: keep it
             .agg(seeds="size", mean="mean", sd="std", low="min", high="max").reset_index())
    return table.round({"mean": 2, "sd": 2, "low": 2, "high": 2})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--shots", nargs="*", help="only these samples per class (e.g. all 32)")
    parser.add_argument("--out", type=Path, help="also write the table here (CSV)")
    args = parser.parse_args()
    table = norms_table(args.store, args.shots)
    print(table.to_string(index=False))
    if args.out:
        with io.atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)


if __name__ == "__main__":
    main()
