"""SIB-200 packaged data, loaders and their errors, language metadata, k-shot sampling.

Fast and offline: the packaged table is read once per process, error cases use tiny folders in
tmp_path, and the "hub" source is exercised only through a fake `datasets` module.
"""
from __future__ import annotations

import ast
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xlprompt.data import languages as langmod
from xlprompt.data.languages import LanguageInfo, all_languages, language_info, resolve_languages
from xlprompt.data.sampling import dev_size, few_shot_splits, k_shot
from xlprompt.data.sib200 import LABELS, SPLITS, _packaged, load_sib200, sib200_languages
from xlprompt.core.errors import XlpromptError

ROWS = {"train": 701, "dev": 99, "test": 204}
HEADER = "index_id\tcategory\ttext\n"
_env = os.environ.get("XLPROMPT_DATA")
SHARED = Path(_env) if _env else Path(__file__).resolve().parents[2] / "shared" / "data"
SIB_DIR = SHARED / "sib200"
needs_source = pytest.mark.skipif(not (SIB_DIR / "eng_Latn").is_dir(), reason=f"no SIB-200 source at {SIB_DIR}")


def make_lang(root: Path, code: str = "eng_Latn", **files: str) -> Path:
    """A language folder with valid train/dev/test files, any of which `files` overrides."""
    folder = root / code
    folder.mkdir(parents=True, exist_ok=True)
    rows = "1\ttravel\tA \"quoted\" trip.\n2\tsports\tNA\n3\thealth\tnull\n"
    for split in SPLITS:
        (folder / f"{split}.tsv").write_text(files.get(split, HEADER + rows), encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------ packaged table


def test_packaged_table_shape_and_label_alignment():
    table = _packaged().table.to_pandas()
    langs = sib200_languages(source="packaged")
    assert len(langs) == 205 and langs == sorted(langs) and "eng_Latn" in langs
    counts = table.groupby(["language", "split"], observed=True).size()
    for split, n in ROWS.items():
        assert (counts.xs(split, level="split") == n).all(), split
        assert counts.xs(split, level="split").size == 205
    # same index_id -> same label in every language, and ids never repeat within a split
    per_id = table.groupby(["split", "index_id"], observed=True)["label"].nunique()
    assert (per_id == 1).all()
    assert table.groupby(["language", "split"], observed=True)["index_id"].nunique().eq(
        table.groupby(["language", "split"], observed=True).size()).all()
    assert (table["text"].str.strip() != "").all()
    assert set(table["label"].unique()) == set(range(len(LABELS)))


def test_load_packaged_frame_layout():
    df = load_sib200("train", "eng_Latn")
    assert list(df.columns) == ["index_id", "text", "label"]
    assert df["index_id"].dtype == np.int64 and df["label"].dtype == np.int64
    assert len(df) == 701 and df["label"].between(0, len(LABELS) - 1).all()
    assert df.loc[0, "index_id"] == 431 and LABELS[df.loc[0, "label"]] == "geography"
    zh = load_sib200("test", "zho_Hans", source="packaged")
    assert len(zh) == 204 and zh["index_id"].tolist() == load_sib200("test", "eng_Latn")["index_id"].tolist()


@pytest.fixture(scope="module")
def sib_source(tmp_path_factory):
    """The SIB-200 source folder: the shared one when present, else (a clean clone) the packaged rows written
    back in the source's own format (`index_id<TAB>category<TAB>text`, one folder per language), so the
    folder reader and the packaged table are still checked against each other on every real sentence."""
    if (SIB_DIR / "eng_Latn").is_dir():
        return SHARED
    root = tmp_path_factory.mktemp("sib-source")
    for language in ["eng_Latn", "zho_Hant", "nqo_Nkoo", "acm_Arab"]:
        folder = root / "sib200" / language
        folder.mkdir(parents=True)
        for split in SPLITS:
            df = load_sib200(split, language, source="packaged")
            assert not df["text"].str.contains("[\t\n]").any()
            lines = [f"{i}\t{LABELS[y]}\t{t}" for i, y, t in zip(df["index_id"], df["label"], df["text"])]
            (folder / f"{split}.tsv").write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("language", ["eng_Latn", "zho_Hant", "nqo_Nkoo", "acm_Arab"])
def test_packaged_equals_dir(language, sib_source):
    for split in SPLITS:
        packaged = load_sib200(split, language, source="packaged")
        from_dir = load_sib200(split, language, data_dir=sib_source / "sib200")  # auto -> dir
        pd.testing.assert_frame_equal(packaged, from_dir)
        assert len(packaged) == ROWS[split]
    # the parent folder works too (its sib200/ subfolder has the language folders)
    pd.testing.assert_frame_equal(load_sib200("dev", language, data_dir=sib_source, source="dir"),
                                  load_sib200("dev", language))


@needs_source
def test_dir_languages_match_packaged():
    assert sib200_languages(data_dir=SIB_DIR) == sib200_languages()


# ---------------------------------------------------------------------------------------- dir source


def test_dir_source_keeps_quotes_and_na_words(tmp_path):
    make_lang(tmp_path)
    df = load_sib200("train", "eng_Latn", data_dir=tmp_path)
    assert df["text"].tolist() == ['A "quoted" trip.', "NA", "null"]
    assert df["label"].tolist() == [LABELS.index("travel"), LABELS.index("sports"), LABELS.index("health")]
    assert sib200_languages(data_dir=tmp_path) == ["eng_Latn"]


def test_missing_column_names_file_and_column(tmp_path):
    make_lang(tmp_path, dev="index_id\tlabel\ttext\n1\ttravel\thello\n")
    with pytest.raises(XlpromptError, match=r"dev\.tsv has no column 'category'"):
        load_sib200("dev", "eng_Latn", data_dir=tmp_path)


@pytest.mark.parametrize("content", ["", HEADER, HEADER + "\n"])
def test_empty_file(tmp_path, content):
    make_lang(tmp_path, test=content)
    with pytest.raises(XlpromptError, match=r"test\.tsv is empty"):
        load_sib200("test", "eng_Latn", data_dir=tmp_path)


def test_bad_category_names_file_line_and_value(tmp_path):
    make_lang(tmp_path, train=HEADER + "1\ttravel\tok\n2\tweather\tRain.\n")
    with pytest.raises(XlpromptError, match=r"train\.tsv, line 3: category 'weather'") as err:
        load_sib200("train", "eng_Latn", data_dir=tmp_path)
    assert "science/technology" in str(err.value)  # says what is allowed


def test_bad_rows(tmp_path):
    make_lang(tmp_path, train=HEADER + "x1\ttravel\tok\n", dev=HEADER + "1\ttravel\t \n",
              test=HEADER + "1\ttravel\ta\n1\tsports\tb\n")
    with pytest.raises(XlpromptError, match=r"line 2: index_id 'x1' is not an integer"):
        load_sib200("train", "eng_Latn", data_dir=tmp_path)
    with pytest.raises(XlpromptError, match=r"dev\.tsv, line 2: the text is empty"):
        load_sib200("dev", "eng_Latn", data_dir=tmp_path)
    with pytest.raises(XlpromptError, match=r"line 3: index_id 1 appears twice"):
        load_sib200("test", "eng_Latn", data_dir=tmp_path)


def test_stray_tab_and_crlf(tmp_path):
    make_lang(tmp_path, train=HEADER + "1\ttravel\ta\tb\n", dev=HEADER + "1\ttravel\n",
              test=(HEADER + "1\ttravel\t  Spaced \"x\"\n\n").replace("\n", "\r\n"))
    with pytest.raises(XlpromptError, match=r"train\.tsv, line 2: 4 tab-separated fields where the header has 3"):
        load_sib200("train", "eng_Latn", data_dir=tmp_path)
    with pytest.raises(XlpromptError, match=r"dev\.tsv, line 2: 2 tab-separated fields"):
        load_sib200("dev", "eng_Latn", data_dir=tmp_path)
    assert load_sib200("test", "eng_Latn", data_dir=tmp_path)["text"].tolist() == ['  Spaced "x"']


def test_unknown_language_suggests(tmp_path):
    make_lang(tmp_path, "eng_Latn")
    make_lang(tmp_path, "swh_Latn")
    with pytest.raises(XlpromptError, match=r"'eng_Ltn'.*Did you mean: eng_Latn") as err:
        load_sib200("train", "eng_Ltn", data_dir=tmp_path)
    assert "xlprompt languages" in str(err.value)
    with pytest.raises(XlpromptError, match=r"'swahili'.*Did you mean: swh_Latn"):
        load_sib200("train", "swahili")  # packaged; matched by name
    with pytest.raises(XlpromptError, match=r"Did you mean: zho_Hans, zho_Hant"):
        load_sib200("train", "zho")


def test_missing_dir_file_and_split(tmp_path):
    with pytest.raises(XlpromptError, match=r"does not exist"):
        load_sib200("train", "eng_Latn", data_dir=tmp_path / "nope")
    with pytest.raises(XlpromptError, match=r"no SIB-200 language folders"):
        load_sib200("train", "eng_Latn", data_dir=tmp_path)
    folder = make_lang(tmp_path)
    (folder / "dev.tsv").unlink()
    with pytest.raises(XlpromptError, match=r"dev\.tsv is missing"):
        load_sib200("dev", "eng_Latn", data_dir=tmp_path)
    with pytest.raises(XlpromptError, match=r"Unknown SIB-200 split 'validation'.*'dev'"):
        load_sib200("validation", "eng_Latn")
    with pytest.raises(XlpromptError, match=r"Unknown SIB-200 source"):
        load_sib200("dev", "eng_Latn", source="web")
    with pytest.raises(XlpromptError, match=r"only read with source='dir'"):
        load_sib200("dev", "eng_Latn", data_dir=tmp_path, source="packaged")


def test_errors_write_nothing(tmp_path):
    make_lang(tmp_path, train=HEADER + "1\tweather\tx\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(XlpromptError):
        load_sib200("train", "eng_Latn", data_dir=tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---------------------------------------------------------------------------------------- hub source


def test_hub_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(XlpromptError, match=r"pip install datasets"):
        load_sib200("train", "eng_Latn", source="hub")


def test_hub_maps_columns_and_split(monkeypatch):
    calls = []

    class FakeDataset(dict):
        column_names = ["index_id", "category", "text"]
        features: dict = {}

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset(index_id=[7, 3], category=["travel", "health"], text=["a", "b"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    df = load_sib200("dev", "eng_Latn", source="hub")
    assert calls == [("Davlan/sib200", "eng_Latn", "validation")]
    assert df.to_dict("list") == {"index_id": [7, 3], "text": ["a", "b"], "label": [1, 4]}

    def broken(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=broken))
    with pytest.raises(XlpromptError, match=r"Could not load Davlan/sib200.*source='packaged'"):
        load_sib200("test", "eng_Latn", source="hub")
    with pytest.raises(XlpromptError, match=r"Unknown language code 'xx_Latn'"):
        load_sib200("test", "xx_Latn", source="hub")


# ----------------------------------------------------------------------------------------- languages


def test_languages_cover_sib200():
    codes = all_languages()
    assert codes == sib200_languages()
    for code in codes:
        info = language_info(code)
        assert isinstance(info, LanguageInfo) and info.code == code
        assert info.name.strip() and info.script_name.strip()
        assert info.iso639_3 == code.split("_")[0] and info.script == code.split("_")[1]
        assert "individual language" not in info.name
    assert len({language_info(c).name for c in codes}) == len(codes)  # names tell rows apart
    assert language_info("swh_Latn").name == "Swahili"
    assert language_info("zho_Hans").name == "Chinese (Simplified)"
    assert language_info("zho_Hant").name == "Chinese (Traditional)"
    assert language_info("acm_Arab").name == "Mesopotamian Arabic"
    assert language_info("ace_Arab").name == "Acehnese (Arabic)"
    assert language_info("ace_Latn").name == "Acehnese (Latin)"
    with pytest.raises(XlpromptError, match=r"Did you mean: eng_Latn"):
        language_info("eng")


def test_resolve_languages():
    avail = ["deu_Latn", "eng_Latn", "swh_Latn"]
    assert resolve_languages(None, avail) == avail
    assert resolve_languages("all", avail) == avail
    assert resolve_languages(" swh_Latn, eng_Latn ,swh_Latn", avail) == ["swh_Latn", "eng_Latn"]
    assert resolve_languages(["eng_Latn"], avail) == ["eng_Latn"]
    with pytest.raises(XlpromptError, match=r"'eng_latn'.*Did you mean: eng_Latn.*xlprompt languages"):
        resolve_languages("deu_Latn,eng_latn", avail)
    with pytest.raises(XlpromptError, match=r"No language codes"):
        resolve_languages(" , ", avail)


def test_runtime_modules_do_not_import_torch_or_langcodes():
    """langcodes is build-time only; the data layer must work without torch."""
    for module in ("languages", "sib200", "sampling"):
        tree = ast.parse(Path(langmod.__file__).with_name(f"{module}.py").read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"torch", "langcodes", "language_data"}, module


# ------------------------------------------------------------------------------------------ sampling


@pytest.fixture(scope="module")
def train_df():
    return load_sib200("train", "eng_Latn")


@pytest.mark.parametrize("n", [1, 4, 16])
def test_k_shot_counts_and_determinism(train_df, n):
    a = k_shot(train_df, n, seed=3)
    assert a["label"].value_counts().to_dict() == {label: n for label in range(len(LABELS))}
    assert not a["index_id"].duplicated().any()
    pd.testing.assert_frame_equal(a, k_shot(train_df, n, seed=3))
    assert set(a["index_id"]) != set(k_shot(train_df, n, seed=4)["index_id"])
    assert list(a.index) == list(range(len(a)))


def test_k_shot_shuffles_nests_and_handles_small_classes(train_df):
    a = k_shot(train_df, 8, seed=0)
    assert not a["label"].is_monotonic_increasing  # shuffled, not grouped by class
    assert set(k_shot(train_df, 4, seed=0)["index_id"]) <= set(a["index_id"])
    small = k_shot(train_df, 100, seed=0)  # geography has 58 rows: all of them, no error
    counts = small["label"].value_counts()
    assert counts[LABELS.index("geography")] == 58 and counts[LABELS.index("travel")] == 100
    for everything in (None, "all", "ALL"):
        full = k_shot(train_df, everything, seed=1)
        assert len(full) == 701 and set(full["index_id"]) == set(train_df["index_id"])
        assert not full["index_id"].equals(train_df["index_id"])
    assert len(k_shot(train_df, 0, seed=0)) == 0


def test_k_shot_rejects_bad_input(train_df):
    for bad in (-1, 2.5, "some", True):
        with pytest.raises(XlpromptError, match="per class"):
            k_shot(train_df, bad, seed=0)
    with pytest.raises(XlpromptError, match="seed"):
        k_shot(train_df, 2, seed=None)
    with pytest.raises(XlpromptError, match="no label column 'y'"):
        k_shot(train_df, 2, seed=0, label_column="y")


@pytest.mark.parametrize("n", [1, 4, 5, 8, 16, 32])
def test_few_shot_splits_dev_is_quarter(train_df, n):
    dev = load_sib200("dev", "eng_Latn")
    assert dev_size(n) == math.ceil(n / 4)
    tr, dv = few_shot_splits(train_df, dev, n, seed=7)
    assert (tr["label"].value_counts() == n).all() and tr["label"].nunique() == len(LABELS)
    expected = {lab: min(dev_size(n), c) for lab, c in dev["label"].value_counts().items()}
    assert dv["label"].value_counts().to_dict() == expected


def test_few_shot_splits_all(train_df):
    dev = load_sib200("dev", "eng_Latn")
    tr, dv = few_shot_splits(train_df, dev, None, seed=0)
    assert len(tr) == 701 and len(dv) == 99


def test_capped_evaluation_rows_are_fixed_nested_and_keep_parallel_sets_parallel():
    from xlprompt.data.sampling import cap_rows

    english = pd.DataFrame({"text": [f"en {i}" for i in range(50)], "label": [i % 3 for i in range(50)]})
    german = pd.DataFrame({"text": [f"de {i}" for i in range(50)], "label": [i % 3 for i in range(50)]})
    small, large = cap_rows(english, 10), cap_rows(english, 25)
    assert len(small) == 10 and len(large) == 25
    positions = [int(t.split()[1]) for t in small["text"]]
    assert positions == sorted(positions) and positions != list(range(10))  # file order, not the first ten
    assert set(small["text"]) <= set(large["text"])  # a smaller cap is a subset of a larger one
    assert [t.replace("de", "en") for t in cap_rows(german, 10)["text"]] == small["text"].tolist()
    assert cap_rows(english, 10).equals(small)  # no seed: the same rows every time
    assert cap_rows(english, None) is english and cap_rows(english, 50) is english
    for bad in (0, -1, 2.5, True):
        with pytest.raises(XlpromptError, match="cap"):
            cap_rows(english, bad)
