"""XNLI and PAWS-X loaders and tasks, own data in every layout and format, and one clear error per mistake."""
from __future__ import annotations

import json
import sys
import types

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA
from xlprompt import TrainConfig, XlpromptError, fit
from xlprompt.cli import app
from xlprompt.data.custom import CustomSpec, custom_label_names, custom_languages, load_custom
from xlprompt.data.pairs import PAWSX, XNLI, hash_bucket, load_pairs, pair_languages
from xlprompt.evaluation.evaluate import evaluate
from xlprompt.prompts.config import DeepPromptConfig
from xlprompt.runs.run import Run
from xlprompt.tasks import get_task

runner = CliRunner()
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "xnli").is_dir() or not (SHARED_DATA / "pawsx").is_dir(),
                                  reason="shared XNLI / PAWS-X data absent")


def flat(res) -> str:
    return " ".join(res.output.split())


# ------------------------------------------------------------------------------ shared data (README)


@needs_shared
def test_xnli_counts_and_offline_split():
    assert pair_languages(XNLI, SHARED_DATA) == sorted(XNLI.languages)
    for lang in ("en", "de", "sw", "zh"):
        test = load_pairs(XNLI, "test", lang, SHARED_DATA)
        assert len(test) == 5010 and test["label"].value_counts().tolist() == [1670] * 3
    train, dev = (load_pairs(XNLI, s, "en", SHARED_DATA) for s in ("train", "dev"))
    assert len(train) + len(dev) == 2490 and 0.85 < len(train) / 2490 < 0.95
    assert set(train["label"]) == set(dev["label"]) == {0, 1, 2}
    assert not set(train["text"]) & set(dev["text"])  # hashed by premise: no premise on both sides
    assert all(hash_bucket(t) >= 90 for t in dev["text"])
    with pytest.raises(XlpromptError, match="only English trains offline"):
        load_pairs(XNLI, "train", "de", SHARED_DATA)


@needs_shared
def test_pawsx_counts_without_ns_pairs():
    assert pair_languages(PAWSX, SHARED_DATA) == ["de", "en", "es", "fr", "ja", "ko", "zh"]
    ns = {"de": 68, "es": 38, "fr": 8, "ja": 20, "ko": 35, "zh": 16}  # README: NS pairs per dev file
    for lang, dropped in ns.items():
        assert len(load_pairs(PAWSX, "dev", lang, SHARED_DATA)) == 2000 - dropped
    assert len(load_pairs(PAWSX, "test", "es", SHARED_DATA)) == 2000 - 38  # no test here: the dev set
    de, zh = (load_pairs(PAWSX, "test", lang, SHARED_DATA) for lang in ("de", "zh"))
    assert (len(de), int(de["label"].sum())) == (2000 - 32, 895)  # quoted test dump, NS rows labelled 0
    assert (len(zh), int(zh["label"].sum())) == (2000 - 25, 894)
    en = [load_pairs(PAWSX, s, "en", SHARED_DATA) for s in ("train", "dev", "test")]
    assert sum(map(len, en)) == 2000 and all(set(f["label"]) == {0, 1} for f in en)
    assert not set(en[0]["text"]) & set(en[2]["text"])


def test_hub_path_needs_datasets_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("XLPROMPT_DATA", str(tmp_path))  # a data folder without xnli/: the hub is next
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(XlpromptError, match="pip install datasets"):
        load_pairs(XNLI, "test", "de")
    fake = types.SimpleNamespace(load_dataset=lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(XlpromptError, match="facebook/xnli.*offline"):
        load_pairs(XNLI, "train", "de")
    with pytest.raises(XlpromptError, match="no XNLI folder"):
        load_pairs(XNLI, "test", "de", tmp_path)  # an explicit folder must hold the data
    hub = {"premise": ["a", "b", "c"], "hypothesis": ["x", "y", "z"], "label": [2, -1, 0]}
    features = {"label": types.SimpleNamespace(names=list(XNLI.labels))}  # a ClassLabel
    fake.load_dataset = lambda name, lang, split=None: Table(hub, features)
    frame = load_pairs(XNLI, "train", "sw")
    assert frame["text"].tolist() == ["a", "c"] and frame["label"].tolist() == [2, 0]  # unlabelled (-1) dropped
    with pytest.raises(XlpromptError, match="pip install datasets"):
        monkeypatch.setitem(sys.modules, "datasets", None)
        custom_languages(CustomSpec.from_dict({"path": "hf:someone/data"}))


class Table:
    """The little of a `datasets.Dataset` the hub loaders touch."""

    def __init__(self, columns: dict, features: dict):
        self.columns, self.column_names, self.features = columns, list(columns), features

    def __getitem__(self, column):
        return self.columns[column]


# --------------------------------------------------------------------------- tasks end to end (tiny)


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    """A few rows of the real files, so the tasks run on the real formats in seconds."""
    if not (SHARED_DATA / "xnli").is_dir():
        pytest.skip("shared XNLI / PAWS-X data absent")
    root = tmp_path_factory.mktemp("pairs")
    for ds, files in (("xnli", ["en/dev.tsv", "en/test.tsv", "de/test.tsv", "sw/test.tsv"]),
                      ("pawsx", ["en/dev.tsv", "de/test.tsv", "ja/dev.tsv"])):
        for name in files:
            lines = (SHARED_DATA / ds / name).read_text(encoding="utf-8").split("\n")
            (root / ds / name).parent.mkdir(parents=True, exist_ok=True)
            keep = 240 if "en/dev" in name else 30 + lines[0].startswith("id\t")  # 30 pairs (+ a header)
            (root / ds / name).write_text("\n".join(lines[:keep]) + "\n", encoding="utf-8")
    return root


def test_xnli_end_to_end(tiny_model_dir, small_pairs, tmp_path):
    config = TrainConfig(task="xnli", model=str(tiny_model_dir("xlm-roberta")), method=DeepPromptConfig(prompt_length=2),
                         shots=8, epochs=1, data_dir=str(small_pairs))
    run = fit(config, progress=False)
    run.save(tmp_path / "run")
    results = evaluate(Run.load(tmp_path / "run"), "all", progress=False)
    assert results["task"] == "xnli" and set(results["languages"]) == {"de", "en", "sw"}
    assert all(set(m) == {"accuracy", "macro_f1", "n"} and m["n"] == 30 for m in results["languages"].values())
    assert results["mean"]["languages"] == 3 and "English XNLI dev" in results["notes"]
    # alignment on parallel pairs (XNLI test rows translate each other): both texts of a pair are pooled
    from xlprompt.evaluation.representations import measure_run

    found = measure_run(Run.load(tmp_path / "run"), None, 10)
    assert found["pivot"] == "en" and found["languages"] == ["de", "sw"] and found["split"] == "test"
    assert len(found["layers"]) == 2 * (found["layer"] + 1) and len(found["rows"]) == 2
    assert all(0 <= r["retrieval"] <= 1 and -1 <= r["cosine"] <= 1 for r in found["layers"])
    # Run.predict reads pairs as evaluate does: its labels give evaluate's accuracy on the same rows
    run = Run.load(tmp_path / "run")
    german = get_task("xnli").load("test", "de", str(small_pairs))
    labels = run.predict(german["text"].tolist(), text_pairs=german["text_pair"].tolist(), precision="fp32")
    gold = [run.model_label_names()[i] for i in german["label"]]
    assert results["languages"]["de"]["accuracy"] == pytest.approx(sum(a == b for a, b in zip(labels, gold)) / 30)
    # served over HTTP: the same labels for the same pairs, at the precision the plan picks for serving
    import httpx

    from test_serve import serving
    from xlprompt.execution import resolve
    from xlprompt.serving import PromptBank
    from xlprompt.serving.app import ServeSettings

    bank = PromptBank(run.model.backbone)  # precision auto, as `xlprompt serve` starts
    bank.add("nli", tmp_path / "run")
    with serving(bank, ServeSettings(max_texts=32)) as (url, _), httpx.Client(base_url=url) as client:
        health = client.get("/health").json()
        expected = resolve("cpu", None, "auto", "auto", threads=None, purpose="serve", backbone=run.model.backbone)
        assert health["precision"] == expected.precision and health["precision_why"]
        answer = client.post("/classify", json={"prompt": "nli", "texts": german["text"].tolist(),
                                                "text_pairs": german["text_pair"].tolist()})
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == labels
        single = client.post("/classify", json={"prompt": "nli", "texts": ["a premise"]})
        assert single.status_code == 400 and "needs text_pairs" in single.json()["error"]


def test_pawsx_end_to_end_cli(tiny_model_dir, small_pairs, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--task", "pawsx", "--model", str(tiny_model_dir("xlm-roberta")), "--method",
                              "deep", "--prompt-length", "2", "--shots", "8", "--epochs", "1",
                              "--data-dir", str(small_pairs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(out), "--data-dir", str(small_pairs), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["languages"]) == {"de", "en", "ja"} and "PAWS-X dev" in results["notes"]
    assert results["languages"]["ja"]["n"] == 30 and 0 < results["languages"]["en"]["n"] < 30  # en: held out part
    res = runner.invoke(app, ["languages", "--task", "pawsx", "--data-dir", str(small_pairs)])
    assert res.exit_code == 0 and "Japanese" in flat(res)


# ----------------------------------------------------------------------------------- own data


def toy_rows(lang: str, n: int, seed: int) -> list[dict]:
    """'alpha ...' is pos, 'beta ...' neg; languages use different noise words (as in conftest)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    off = 0 if lang == "en" else 20
    rows = []
    for i in range(n):
        y = int(rng.integers(0, 2))
        noise = " ".join(f"w{off + k}" for k in rng.integers(0, 20, 4))
        rows.append({"sentence": ("alpha " if y else "beta ") + noise, "second": f"w{off + i % 20}",
                     "y": "pos" if y else "neg", "lang": lang})
    return rows


def write(path, rows, fmt, columns=("sentence", "second", "y", "lang")):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        text = "".join(json.dumps({c: r[c] for c in columns}) + "\n" for r in rows)
    else:
        sep = "\t" if fmt == "tsv" else ","
        text = "\n".join([sep.join(columns), *(sep.join(str(r[c]) for c in columns) for r in rows)]) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def folder(root, fmt, splits=("train", "dev", "test")):
    for lang in ("en", "xx"):
        for i, split in enumerate(splits):
            write(root / lang / f"{split}.{fmt}", toy_rows(lang, 24, i + (lang == "xx") * 10), fmt)
    return root


SPEC = dict(text_column="sentence", text_pair_column="second", label_column="y")


@pytest.mark.parametrize("layout", ["tsv", "csv", "jsonl", "single_file", "split_files"])
def test_own_data_layouts(tmp_path, layout):
    spec = dict(SPEC)
    if layout in ("tsv", "csv", "jsonl"):
        path = folder(tmp_path / "d", layout)
    elif layout == "split_files":
        path = tmp_path / "d"
        for split in ("train", "dev", "test"):
            write(path / f"{split}.csv", toy_rows("en", 10, 1) + toy_rows("xx", 10, 2), "csv")
        spec["language_column"] = "lang"
    else:
        rows = [dict(r, split=s) for s in ("train", "validation", "test")
                for r in toy_rows("en", 10, 1) + toy_rows("xx", 10, 2)]
        path = write(tmp_path / "all.jsonl", rows, "jsonl", ("sentence", "second", "y", "lang", "split"))
        spec.update(language_column="lang", split_column="split")
    s = CustomSpec.from_dict({"path": str(path), **spec})
    assert custom_languages(s) == ["en", "xx"]
    names = custom_label_names(s, "en")
    assert names == ["neg", "pos"]
    frame = load_custom(s, "test", "xx", names)
    assert list(frame.columns) == ["index_id", "text", "label", "text_pair"]
    assert all((t.startswith("alpha")) == bool(y) for t, y in zip(frame["text"], frame["label"]))


def test_missing_dev_is_held_out_from_train_and_labels_sort_numerically(tmp_path):
    path = tmp_path / "d"
    rows = [dict(r, y=str(10 if r["y"] == "pos" else 2)) for r in toy_rows("en", 60, 0)]
    write(path / "en" / "train.tsv", rows, "tsv")
    s = CustomSpec.from_dict({"path": str(path), **SPEC})
    names = custom_label_names(s, "en")
    assert names == ["2", "10"]
    train, dev = (load_custom(s, split, "en", names) for split in ("train", "dev"))
    assert len(train) + len(dev) == 60 and len(dev) > 0 and not set(train["index_id"]) & set(dev["index_id"])


def test_own_data_cli_end_to_end(tiny_model_dir, tmp_path):
    data = folder(tmp_path / "data", "tsv")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data-dir", str(data), "--text-column", "sentence", "--text-pair-column",
                              "second", "--label-column", "y", "--train-lang", "en", "--model",
                              str(tiny_model_dir("xlm-roberta")), "--method", "deep", "--prompt-length", "2",
                              "--epochs", "1", "--shots", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["task"] == "custom" and saved["custom"]["label_names"] == ["neg", "pos"]
    other = tmp_path / "other.jsonl"  # evaluation data elsewhere, one file, only one label present
    write(other, [dict(r, split="test") for r in toy_rows("xx", 12, 5) if r["y"] == "pos"], "jsonl",
          ("sentence", "second", "y", "lang", "split"))
    res = runner.invoke(app, ["evaluate", str(out), "--data-dir", str(data), "--langs", "all", "--out",
                              str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["languages"]) == {"en", "xx"} and results["languages"]["xx"]["n"] == 24
    assert results["task"] == "custom" and "labels from the en training rows" in results["notes"]
    run = Run.load(out)  # the saved label names map 'pos' to 1 whatever the evaluation data holds
    spec = CustomSpec.from_dict({**run.config.custom, "path": str(other), "language_column": "lang",
                                 "split_column": "split"})
    assert set(load_custom(spec, "test", "xx", run.config.custom["label_names"])["label"]) == {1}


BAD = [  # (file name, content, what the message must name besides file and line)
    ("train.tsv", "sentence\ty\nalpha w1\tpos\nbeta w2\n", "line 3", "the header has 2"),
    ("train.tsv", "text\ty\nalpha w1\tpos\n", "line 1", "'sentence'"),
    ("train.tsv", "sentence\ty\nalpha w1\tpos\n \tneg\n", "line 3", "'sentence'"),
    ("train.csv", 'sentence,y\nalpha w1,pos\n"beta, w2",neg,extra\n', "line 3", "3 comma-separated"),
    ("train.jsonl", '{"sentence": "alpha w1", "y": "pos"}\n{"sentence": "beta w2", "y": neg}\n', "line 2", "JSON"),
    ("train.jsonl", '{"sentence": "alpha w1", "y": "pos"}\n{"text": "beta w2", "y": "neg"}\n', "line 2", "'sentence'"),
    ("train.jsonl", '{"sentence": "alpha w1", "y": "pos"}\n{"sentence": 3, "y": "neg"}\n', "line 2", "'sentence'"),
    ("dev.tsv", "sentence\ty\nalpha w1\tpos\nbeta w2\tmaybe\n", "line 3", "'maybe' was not seen in training"),
    ("dev.tsv", "sentence\ty\nalpha w1\tpos\nbeta w2\t\n", "line 3", "'y'"),
]


@pytest.mark.parametrize("name,content,line,what", BAD)
def test_own_data_errors_name_file_line_column(tmp_path, name, content, line, what):
    data = tmp_path / "data" / "en"
    data.mkdir(parents=True)
    if not name.startswith("train"):
        (data / "train.tsv").write_text("sentence\ty\nalpha w1\tpos\nbeta w2\tneg\n", encoding="utf-8")
    (data / name).write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data-dir", str(tmp_path / "data"), "--text-column", "sentence",
                              "--label-column", "y", "--model", "unused-model", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert name in flat(res) and line in flat(res) and what in flat(res), flat(res)
    assert "Traceback" not in flat(res) and not out.exists()


def test_own_data_config_errors(tmp_path):
    data = folder(tmp_path / "data", "tsv")
    with pytest.raises(XlpromptError, match="task='custom'"):
        TrainConfig(task="custom")
    with pytest.raises(XlpromptError, match="Unknown custom data keys"):
        TrainConfig(task="custom", custom={"path": str(data), "text_col": "x"})
    with pytest.raises(XlpromptError, match="--train-lang"):  # two languages with train rows
        fit(TrainConfig(task="custom", custom={"path": str(data), **SPEC}), progress=False)
    one = write(tmp_path / "one.tsv", [dict(r, split="train") for r in toy_rows("en", 4, 0)], "tsv",
                ("sentence", "y", "lang", "split"))
    with pytest.raises(XlpromptError, match="split_column"):
        custom_languages(CustomSpec.from_dict({"path": str(one), **SPEC, "text_pair_column": None,
                                               "language_column": "lang"}))
    res = runner.invoke(app, ["train", "--text-column", "sentence", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--data-dir" in flat(res)


def test_evaluation_error_writes_nothing(tiny_model_dir, tmp_path):
    data = folder(tmp_path / "data", "csv")
    run = fit(TrainConfig(task="custom", custom={"path": str(data), **SPEC}, train_language="en",
                          model=str(tiny_model_dir("xlm-roberta")), epochs=1, shots=4), progress=False)
    run.save(tmp_path / "run")
    bad = folder(tmp_path / "bad", "csv")
    (bad / "xx" / "test.csv").write_text("sentence,second,y,lang\nalpha w1,w2,unknown,xx\n", encoding="utf-8")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--data-dir", str(bad), "--out",
                              str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "test.csv, line 2, column 'y'" in flat(res)
    assert not (tmp_path / "r.json").exists()
