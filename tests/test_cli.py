"""The CLI contract other tools script against, and one clear error (exit 2, nothing written) per mistake."""
import json
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from xlprompt.cli import app

runner = CliRunner()


def flat(res) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def train_args(model_dir, out, *extra):
    return ["train", "--task", "toy", "--model", str(model_dir), "--prompt-length", "2", "--epochs", "1",
            "--lr", "0.05", "--out", str(out), *extra]


def test_train_then_evaluate_writes_the_json_contract(tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, train_args(tiny_model_dir("xlm-roberta"), out))
    assert res.exit_code == 0, res.output
    assert {"config.json", "curve.json", "run.json", "prompt.safetensors", "head.safetensors"} <= \
        {p.name for p in out.iterdir()}
    res = runner.invoke(app, ["evaluate", str(out), "--langs", "all", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "r.json").read_text())
    assert set(results["languages"]) == {"eng_Latn", "deu_Latn"}
    assert results["run"] == str(out) and results["model"] == str(tiny_model_dir("xlm-roberta"))
    assert results["train_language"] == "eng_Latn" and results["task"] == "toy" and results["split"] == "test"
    # each language's numbers are what the run's own predictions give on that language's test rows
    from xlprompt import load
    from xlprompt.tasks import get_task

    run = load(out)
    for code, metrics in results["languages"].items():
        assert set(metrics) >= {"accuracy", "macro_f1", "n"}
        frame = get_task("toy").load("test", code)
        predicted = run.predict(frame["text"].tolist(), precision="fp32")
        gold = [run.model_label_names()[i] for i in frame["label"]]
        assert metrics["n"] == len(frame) == 40
        assert metrics["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predicted, gold)) / len(gold))
    assert results["mean"]["accuracy"] == pytest.approx(sum(m["accuracy"] for m in results["languages"].values()) / 2)
    table = pd.read_csv(tmp_path / "r.csv")
    assert set(table["language"]) >= {"eng_Latn", "deu_Latn"}
    assert "mean" in flat(res)


def test_existing_run_is_not_overwritten(tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, train_args(tiny_model_dir("bert"), out)).exit_code == 0
    res = runner.invoke(app, train_args(tiny_model_dir("bert"), out))
    assert res.exit_code == 2 and "--overwrite" in flat(res)


def test_unknown_language_is_one_clear_error(tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, train_args(tiny_model_dir("bert"), out)).exit_code == 0
    res = runner.invoke(app, ["evaluate", str(out), "--langs", "eng_Latn,deu_Latx", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2
    assert "deu_Latx" in flat(res) and "deu_Latn" in flat(res)  # names the bad code, suggests the near one
    assert "Traceback" not in flat(res)
    assert not (tmp_path / "r.json").exists()


def test_missing_data_dir(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data-dir", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2 and "does not exist" in flat(res)
    assert not out.exists()


def _sib_folder(root, header="index_id\tcategory\ttext", rows=("1\tsports\tA match.",)):
    for split in ("train", "dev", "test"):
        d = root / "eng_Latn"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{split}.tsv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize("header,rows,expected", [
    ("index_id\ttopic\ttext", ("1\tsports\tA match.",), "category"),   # wrong column
    ("", (), "empty"),                                                  # empty file
    ("index_id\tcategory\ttext", ("1\tcooking\tA recipe.",), "cooking"),  # unknown label
])
def test_bad_data_folder_is_one_clear_error(tmp_path, header, rows, expected):
    data = _sib_folder(tmp_path / "data", header, rows)
    if not header:
        (data / "eng_Latn" / "train.tsv").write_text("", encoding="utf-8")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data-dir", str(data), "--out", str(out), "--epochs", "1"])
    assert res.exit_code == 2, res.output
    assert expected in flat(res).lower() or expected in flat(res)
    assert "train.tsv" in flat(res)
    assert not (out / "run.json").exists()


def test_uncached_hub_model_fails_fast_offline(tmp_path, monkeypatch):
    """Offline, an uncached hub id is one clear error without a single connection attempt (no retries)."""
    import socket

    attempts = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(
        OSError("no network in this test")))
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: attempts.append(a) or (_ for _ in ()).throw(
        OSError("no network in this test")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = runner.invoke(app, ["train", "--model", "facebook/xglm-564M", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert attempts == []
    assert "not in the Hugging Face cache" in flat(res) and "multilingual-e5-small" in flat(res)
    assert not (tmp_path / "run").exists()


def test_uncached_hub_model_fails_fast_without_offline_flag(monkeypatch):
    """Without HF_HUB_OFFLINE the hub is probed once with a short timeout instead of retrying for 25 s: here
    the endpoint is a local port nobody listens on (the real probe, nothing mocked), then one that listens."""
    import socket

    from xlprompt.core.errors import XlpromptError
    from xlprompt.models import backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    assert backbone._hub_reachable() is False
    with pytest.raises(XlpromptError, match="local model folder"):
        backbone.resolve_model_source("someone/not-cached-model")
    assert time.monotonic() - started < 20  # not transformers' retries
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert backbone._hub_reachable() is True


def test_tasks_and_languages_listing():
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0 and "sib200" in flat(res)
    res = runner.invoke(app, ["languages"])
    assert res.exit_code == 0 and "swh_Latn" in flat(res) and "Swahili" in flat(res)


def test_api_verbs_survive_submodule_imports():
    """Importing xlprompt's modules must not shadow the API functions of the same purpose."""
    import importlib

    import xlprompt

    for name in ("xlprompt.evaluation.evaluate", "xlprompt.training.fit", "xlprompt.runs.run"):
        importlib.import_module(name)
    assert callable(xlprompt.evaluate) and callable(xlprompt.fit) and callable(xlprompt.load)
    assert not hasattr(xlprompt.evaluate, "__path__") and xlprompt.evaluate.__module__ == "xlprompt"
