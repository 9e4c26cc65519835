"""Build the packaged SIB-200 copy: src/xlprompt/data/resources/{sib200.parquet, SIB200_LICENSE,
SIB200_README.md} from a folder in the upstream layout (one folder per FLORES-200 code with
train.tsv, dev.tsv, test.tsv).

    python scripts/build_sib200_resource.py                       # XLPROMPT_DATA or ../shared/data
    python scripts/build_sib200_resource.py --source /path/to/sib200

Every TSV is parsed and validated by the same reader the "dir" source uses at runtime
(`xlprompt.data.sib200.read_sib200_tsv`), so the packaged and dir sources agree by construction.

Layout (measured on the 205-language release, zstd level 19): one long table with columns
language, split (both dictionary-encoded), index_id (int16), label (int8), text, sorted by
language then split (train, dev, test) then file order. The index_id/label columns repeat across
languages but compress to almost nothing, so the long table is 11.2 MB against 12.1 MB for a wide
table with one text column per language, while keeping each (language, split) block contiguous so
the loader can slice it without scanning. Text is ~41 MB raw; xz -9e on the bare text reaches
10.1 MB, so the table is close to what any general compressor gets.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from xlprompt.data.sib200 import LABELS, SPLITS, find_sib200_dir, read_sib200_tsv, _language_dirs  # noqa: E402
from xlprompt.core.errors import XlpromptError  # noqa: E402
from xlprompt.core.io import atomic_path, write_text  # noqa: E402

OUT_DIR = REPO / "src" / "xlprompt" / "data" / "resources"
ZSTD_LEVEL = 19  # 22 gives the same size here and is slower; 9 is 13.1 MB

README = """\
# SIB-200, packaged copy

`sib200.parquet` holds SIB-200 (topic classification, {n_languages} languages and dialects) for
xlprompt's offline "packaged" source (`xlprompt.data.sib200.load_sib200`).

## Provenance

Built by `scripts/build_sib200_resource.py` from a copy of the public repository
[dadelani/sib-200](https://github.com/dadelani/sib-200), folder `data/annotated`, at commit 593cea8
(the data files only). The same data is published on the Hugging Face hub as `Davlan/sib200`.
No sentence, label or id was changed; the files were only parsed (tab-separated, no quoting: many
sentences contain `"`) and re-encoded. Some sentences start or end with spaces in the source; they
are kept as they are.

The upstream repository is licensed Apache-2.0 (copied beside this file as `SIB200_LICENSE`). The
sentences themselves are the FLORES-200 dev/devtest sentences (NLLB Team et al. 2022); see the
FLORES-200 release for its own terms when redistributing the text.

## Contents

| split | rows per language | total rows |
|---|---|---|
{split_rows}

Labels, in the order used for label ids (the order of upstream `labels.txt`):
{labels}.
Rows line up across languages by `index_id` (every language is a translation of the same English
sentences), and every language carries the same label for the same `index_id`.

Columns: `language` (FLORES-200 code, e.g. `eng_Latn`), `split` (train/dev/test), `index_id`
(FLORES sentence id), `label` (int index into the labels above), `text`. Rows are grouped by
language, then split, then the order of the source file. Compression: zstd level {level}.

## Citation

```bibtex
@misc{{adelani2023sib200,
      title={{SIB-200: A Simple, Inclusive, and Big Evaluation Dataset for Topic Classification in 200+ Languages and Dialects}},
      author={{David Ifeoluwa Adelani and Hannah Liu and Xiaoyu Shen and Nikita Vassilyev and Jesujoba O. Alabi and Yanke Mao and Haonan Gao and Annie En-Shiun Lee}},
      year={{2023}},
      eprint={{2309.07445}},
      archivePrefix={{arXiv}},
      primaryClass={{cs.CL}}
}}
```
"""


def read_all(root: Path) -> tuple[list[str], dict[tuple[str, str], object]]:
    """Every (language, split) frame; checks the cross-language invariants the loaders rely on."""
    languages = _language_dirs(root)
    frames = {}
    reference: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    for language in languages:
        for split in SPLITS:
            df = read_sib200_tsv(root / language / f"{split}.tsv")
            frames[language, split] = df
            ids, labels = df["index_id"].to_numpy(), df["label"].to_numpy()
            if split not in reference:
                reference[split] = (language, ids, labels)
                continue
            ref_lang, ref_ids, ref_labels = reference[split]
            if not (np.array_equal(ids, ref_ids) and np.array_equal(labels, ref_labels)):
                raise XlpromptError(f"{root / language / split}.tsv: index_id/category rows differ from "
                                    f"{ref_lang}; SIB-200 languages must align row by row.")
    return languages, frames


def to_table(languages: list[str], frames: dict) -> pa.Table:
    """One long table, grouped by language then split, dictionary-encoded language/split."""
    lang_idx, split_idx, ids, labels, texts = [], [], [], [], []
    for li, language in enumerate(languages):
        for si, split in enumerate(SPLITS):
            df = frames[language, split]
            n = len(df)
            lang_idx.append(np.full(n, li, dtype=np.int16))
            split_idx.append(np.full(n, si, dtype=np.int8))
            ids.append(df["index_id"].to_numpy())
            labels.append(df["label"].to_numpy())
            texts.extend(df["text"].tolist())
    id_arr = np.concatenate(ids)
    if id_arr.min() < 0 or id_arr.max() > np.iinfo(np.int16).max:
        raise XlpromptError("index_id out of int16 range; widen the column type in to_table().")
    schema_meta = {b"labels": ",".join(LABELS).encode(), b"source": b"dadelani/sib-200 data/annotated @593cea8"}
    return pa.table({
        "language": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(lang_idx)), pa.array(languages)),
        "split": pa.DictionaryArray.from_arrays(pa.array(np.concatenate(split_idx)), pa.array(list(SPLITS))),
        "index_id": pa.array(id_arr.astype(np.int16)),
        "label": pa.array(np.concatenate(labels).astype(np.int8)),
        "text": pa.array(texts, type=pa.string()),
    }).replace_schema_metadata(schema_meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None,
                        help="SIB-200-layout folder or its parent (default: XLPROMPT_DATA or ../shared/data)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    try:
        root = find_sib200_dir(args.source).resolve()
        out_dir = args.out_dir.resolve()
        if out_dir == root or root in out_dir.parents:
            raise XlpromptError(f"--out-dir {out_dir} is inside the source folder {root}; the source is read-only.")
        license_src = next((p for p in (root / "LICENSE", root.parent / "LICENSE") if p.is_file()), None)
        if license_src is None:
            raise XlpromptError(f"No LICENSE beside {root}; the packaged copy must carry the upstream license.")
        t0 = time.perf_counter()
        languages, frames = read_all(root)
        table = to_table(languages, frames)
        t1 = time.perf_counter()
        target = out_dir / "sib200.parquet"
        with atomic_path(target) as tmp:
            # One row group and large pages: zstd then sees long runs of one script and language.
            pq.write_table(table, tmp, compression="zstd", compression_level=ZSTD_LEVEL,
                           use_dictionary=["language", "split"], data_page_size=64 << 20,
                           row_group_size=table.num_rows)
        with atomic_path(out_dir / "SIB200_LICENSE") as tmp:
            shutil.copyfile(license_src, tmp)
        counts = {split: len(frames[languages[0], split]) for split in SPLITS}
        write_text(out_dir / "SIB200_README.md", README.format(
            n_languages=len(languages), level=ZSTD_LEVEL, labels=", ".join(f"{i} {n}" for i, n in enumerate(LABELS)),
            split_rows="\n".join(f"| {s} | {n} | {n * len(languages)} |" for s, n in counts.items())))
        for name in ("sib200.parquet", "SIB200_LICENSE", "SIB200_README.md"):
            (out_dir / name).chmod(0o644)  # atomic writes create 0600 files; package data must be world-readable
    except XlpromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = target.stat().st_size
    print(f"{len(languages)} languages, {table.num_rows} rows ({counts}); read {t1 - t0:.1f}s, "
          f"wrote {target} ({size / 1e6:.2f} MB) in {time.perf_counter() - t1:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
