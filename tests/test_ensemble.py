"""Ensembles average the class probabilities of runs that share one frozen model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xlprompt import evaluate, load
from xlprompt.cli import app
from xlprompt.core.errors import XlpromptError
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.prompts.config import DeepPromptConfig, InputPromptConfig
from xlprompt.serving.ensemble import Ensemble, evaluate_ensemble

from serving_runs import TEXTS, register_toy3, train_run


@pytest.fixture(scope="module")
def runs(tiny_model_dir, toy_task, tmp_path_factory):
    register_toy3()
    root, model = tmp_path_factory.mktemp("ensemble-runs"), tiny_model_dir("xlm-roberta")
    return {"a": train_run(model, root / "a", "toy", InputPromptConfig(prompt_length=2), seed=0),
            "b": train_run(model, root / "b", "toy", InputPromptConfig(prompt_length=3), seed=1),
            "c": train_run(model, root / "c", "toy", DeepPromptConfig(prompt_length=2), seed=2),
            "other": train_run(model, root / "other", "toy3", InputPromptConfig(prompt_length=2), seed=3)}


def own_probabilities(path):
    run = load(path)
    enc = encode_texts(run.model.backbone.tokenizer, TEXTS, [0] * len(TEXTS), run.config.max_length)
    return torch.softmax(torch.tensor(predict_encoded(run.model, enc), dtype=torch.float64), -1).numpy()


def test_an_ensemble_is_the_mean_of_its_members_and_one_member_is_the_run(runs):
    trio = Ensemble.from_runs([runs["a"], runs["b"], runs["c"]], precision="fp32")
    expected = (own_probabilities(runs["a"]) + own_probabilities(runs["b"]) + own_probabilities(runs["c"])) / 3
    np.testing.assert_allclose(trio.probabilities(TEXTS), expected, atol=1e-6)
    assert trio.predict(TEXTS) == [trio.label_names[i] for i in expected.argmax(-1)]

    alone = Ensemble.from_runs([runs["a"]], precision="fp32")
    np.testing.assert_allclose(alone.probabilities(TEXTS), own_probabilities(runs["a"]), atol=1e-6)
    assert evaluate_ensemble(alone)["languages"] == evaluate(load(runs["a"]), progress=False, threads=1)["languages"]


def test_members_must_share_a_task(runs):
    with pytest.raises(XlpromptError, match="must share a task"):
        Ensemble.from_runs([runs["a"], runs["other"]], precision="fp32")


def test_the_command_line(runs, tmp_path):
    out = CliRunner().invoke(app, ["evaluate", str(runs["a"]), str(runs["b"]), "--ensemble", "--precision", "fp32",
                                   "--out", str(tmp_path / "ens.json")])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "ens.json").read_text())
    assert len(saved["ensemble"]) == 2 and 0 <= saved["languages"]["eng_Latn"]["accuracy"] <= 1
    refused = CliRunner().invoke(app, ["evaluate", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "x.json")])
    assert refused.exit_code == 2 and "--ensemble" in refused.output and not (tmp_path / "x.json").exists()


def test_a_named_ensemble_is_served(runs, tiny_model_dir):
    import httpx

    from xlprompt.models.backbone import Backbone
    from xlprompt.serving import PromptBank
    from xlprompt.serving.app import ServeSettings

    from test_serve import AUTH, TOKEN, serving

    bank = PromptBank(Backbone.load(str(tiny_model_dir("xlm-roberta"))), precision="fp32")
    for name in ("a", "b", "c", "other"):
        bank.add(name, runs[name])
    bank.add_ensemble("trio", ["a", "b", "c"])
    with pytest.raises(XlpromptError, match="must share a task"):
        bank.add_ensemble("mixed", ["a", "other"])
    expected = (own_probabilities(runs["a"]) + own_probabilities(runs["b"]) + own_probabilities(runs["c"])) / 3
    with serving(bank, ServeSettings(token=TOKEN)) as (url, _):
        with httpx.Client(base_url=url) as client:
            r = client.post("/classify", json={"prompt": "trio", "texts": TEXTS[:4]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["members"] == ["a", "b", "c"]
            got = [[p["scores"][label] for label in body["labels"]] for p in body["predictions"]]
            np.testing.assert_allclose(got, expected[:4], atol=1e-5)
            assert client.get("/prompts").json()["ensembles"] == {"trio": ["a", "b", "c"]}
            refused = client.delete("/prompts/b", headers=AUTH)
            assert refused.status_code == 409 and "trio" in refused.json()["error"]
            assert client.post("/classify", json={"prompt": "a", "texts": TEXTS[:1]}).json().get("members") is None
