#!/usr/bin/env python
"""Stage a smaller evaluation copy of the token-classification data for quick CPU measurements.

Copies UD POS and PAN-X from DATA into OUT keeping the English training/dev files whole and only the first
N sentences of every evaluation file; XQuAD, MLQA, SIB-200, XNLI and PAWS-X are linked unchanged. Point
xlprompt at it with XLPROMPT_DATA=OUT (or --data-dir OUT) and say in results that evaluation used the
first N sentences per language.

    python scripts/stage_eval_subset.py --data ../shared/data --out /tmp/eval-subset --sentences 500
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

LINKED = ("xquad", "mlqa", "sib200", "xnli", "pawsx")


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the full data folder (read only)")
    ap.add_argument("--out", required=True, help="where the staged copy goes (must not be inside --data)")
    ap.add_argument("--sentences", type=int, default=500, help="sentences kept per evaluation file")
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
    for name in LINKED:
        if (data / name).exists() and not (out / name).exists():
            (out / name).symlink_to(data / name)
    print(f"staged {out} (first {args.sentences} sentences per UD POS / PAN-X evaluation file)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
