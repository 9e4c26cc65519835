"""Methods side by side on the same languages, from `xlprompt evaluate --out` JSON files.

    python scripts/compare_evaluations.py probe=probe.json prompt=prompt.json finetune=ft.json [--out table.md]

Per method: English accuracy and the mean over the other languages with a 95 % bootstrap interval
(resampling languages). Per pair: the mean per-language difference with its interval, the Wilcoxon
signed-rank p-value and languages won / lost. The statistics are `xlprompt.analysis.stats`' (the report's).
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from xlprompt.analysis.stats import bootstrap_ci, wilcoxon_p

PIVOT = "eng_Latn"


def accuracies(path: Path) -> dict[str, float]:
    results = json.loads(path.read_text())
    return {code: m["accuracy"] for code, m in results["languages"].items()}


def table(named: dict[str, dict[str, float]]) -> str:
    common = sorted(set.intersection(*(set(a) for a in named.values())) - {PIVOT})
    lines = [f"{len(common)} languages besides {PIVOT}, present in every file", "",
             "| method | English | mean over the other languages [95 % interval] |", "|---|---|---|"]
    for name, acc in named.items():
        values = np.array([acc[c] for c in common])
        lo, hi = bootstrap_ci(values)
        english = f"{acc[PIVOT]:.3f}" if PIVOT in acc else "n/a"
        lines.append(f"| {name} | {english} | {values.mean():.3f} [{lo:.3f}, {hi:.3f}] |")
    lines += ["", "| A vs B | mean difference, points [95 % interval] | Wilcoxon p | languages A wins / loses |",
              "|---|---|---|---|"]
    for a, b in itertools.combinations(named, 2):
        d = np.array([named[a][c] - named[b][c] for c in common])
        lo, hi = bootstrap_ci(d)
        lines.append(f"| {a} vs {b} | {100 * d.mean():+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{wilcoxon_p(d):.2g} | {(d > 0).sum()} / {(d < 0).sum()} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="NAME=results.json (from xlprompt evaluate --out)")
    parser.add_argument("--out", type=Path, help="also write the tables here (Markdown)")
    args = parser.parse_args()
    named = {}
    for item in args.files:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"{item!r}: give NAME=PATH")
        named[name] = accuracies(Path(path))
    text = table(named)
    print(text)
    if args.out:
        from xlprompt.core.io import write_text

        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
