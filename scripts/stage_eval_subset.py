#!/usr/bin/env python
"""Stage a smaller evaluation copy of the token-classification data for quick CPU measurements.

Copies UD POS and PAN-X from DATA into OUT keeping the English training/dev files whole and only the first
N sentences of every evaluation file; with --pairs M, XNLI and PAWS-X likewise keep English dev (their
offline training data) whole and only the first M pairs of every other file; XQuAD, MLQA, SIB-200 (and
XNLI/PAWS-X without --pairs) are linked unchanged. Point xlprompt at it with XLPROMPT_DATA=OUT (or
--data-dir OUT) and say in results that evaluation used the first N sentences / M pairs per language.

    python scripts/stage_eval_subset.py --data ../shared/data --out /tmp/eval-subset --sentences 500 --pairs 1000
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

LINKED = ("xquad", "mlqa", "sib200", "xnli", "pawsx")
PAIRS = ("xnli", "pawsx")


def first_sentences(src: Path, dst: Path, n: int) -> int:
    """The first n blank-line-separated blocks of a CoNLL-U or token-per-line file."""
    out, blocks, current = [], 0, []
    for line in src.read_text(encoding="utf-8").splitlines(keepends=True):
        current.append(line)
        if not line.strip():
            if any(x.strip() for x in current):
                out.extend(current)
                blocks += 1
            current = []
            if blocks >= n:
                break
    if blocks < n and any(x.strip() for x in current):
        out.extend(current + ["\n"])
        blocks += 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(out), encoding="utf-8")
    return blocks


def first_lines(src: Path, dst: Path, n: int) -> None:
    """The first n rows of a TSV, plus its header row where it has one (PAWS-X test files do)."""
    with src.open(encoding="utf-8") as f:
        first = f.readline()
        header = first.startswith("id\t")
        kept = [first] + [line for _, line in zip(range(n if header else n - 1), f)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(kept), encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the full data folder (read only)")
    ap.add_argument("--out", required=True, help="where the staged copy goes (must not be inside --data)")
    ap.add_argument("--sentences", type=int, default=500, help="sentences kept per evaluation file")
    ap.add_argument("--pairs", type=int, default=0, help="XNLI/PAWS-X pairs kept per evaluation file (0: link whole)")
    args = ap.parse_args(argv)
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    if out == data or data in out.parents:
        ap.error("--out must be outside --data (the shared data is read-only)")
    for pattern, folder in (("*.conllu", "udpos"), ("*.tsv", "ner")):
        for src in sorted((data / folder).rglob(pattern)):
            dst = out / src.relative_to(data)
            if src.parent.name == "en" and src.stem in ("train", "dev") and folder == "udpos" or \
                    folder == "ner" and src.parent.name == "en":
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            else:
                first_sentences(src, dst, args.sentences)
    if args.pairs > 0:
        for src in sorted(f for name in PAIRS for f in (data / name).rglob("*.tsv")):
            dst = out / src.relative_to(data)
            if src.parent.name == "en" and src.stem == "dev":
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            else:
                first_lines(src, dst, args.pairs)
    for name in LINKED:
        if args.pairs > 0 and name in PAIRS:
            continue
        if (data / name).exists() and not (out / name).exists():
            (out / name).symlink_to(data / name)
    pairs = f", first {args.pairs} pairs per XNLI / PAWS-X evaluation file" if args.pairs > 0 else ""
    print(f"staged {out} (first {args.sentences} sentences per UD POS / PAN-X evaluation file{pairs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
