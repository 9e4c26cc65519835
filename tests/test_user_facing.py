"""What users see, pinned against independent computations: `quickstart` and its summary, zero-shot transfer
above chance, evaluate's accuracy and macro-F1 by hand, the best-dev-loss epoch really kept, `run.predict`
returning label names, and the default decoder label words in SIB-200's label order."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from xlprompt import TrainConfig, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.prompts.config import InputPromptConfig


def logits_of(run, frame) -> np.ndarray:
    enc = encode_texts(run.model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(),
                       run.config.max_length)
    return predict_encoded(run.model, enc, batch_size=7)


def hand_metrics(gold: list[int], pred: list[int], labels: int) -> tuple[float, float]:
    """Accuracy and macro-F1 written out: per class 2TP / (2TP + FP + FN), 0 for a class never seen nor
    predicted is left out (scikit-learn's `labels=None` convention: classes present in gold or pred)."""
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    f1s = []
    for c in range(labels):
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return accuracy, sum(f1s) / len(f1s)


@pytest.fixture(scope="module")
def english_run(tiny_model_dir, toy_task):
    config = TrainConfig(task="toy", model=str(tiny_model_dir("bert")), method=InputPromptConfig(prompt_length=3),
                         epochs=5, batch_size=8, lr=0.1, head_lr=0.5, seed=0, train_language="eng_Latn")
    return fit(config, progress=False)


def test_trained_prompt_beats_chance_on_a_held_out_language(english_run, toy_task):
    results = english_run.evaluate(["deu_Latn", "eng_Latn"], progress=False)
    deu = results["languages"]["deu_Latn"]
    # deu_Latn shares no noise word with English training; two balanced-ish classes: the observed number of
    # right answers must be one that guessing reaches with probability < 0.001 (a binomial tail)
    n, right = deu["n"], round(deu["accuracy"] * deu["n"])
    assert n == 40, deu
    chance = sum(math.comb(n, k) for k in range(right, n + 1)) / 2 ** n
    assert chance < 1e-3, (deu, chance)


def test_evaluate_accuracy_and_macro_f1_by_hand(english_run, toy_task):
    results = english_run.evaluate(["deu_Latn", "eng_Latn"], progress=False)
    for language in ("deu_Latn", "eng_Latn"):
        frame = toy_task.load("test", language)
        pred = logits_of(english_run, frame).argmax(-1).tolist()
        accuracy, macro_f1 = hand_metrics(frame["label"].tolist(), pred, 2)
        got = results["languages"][language]
        assert got["accuracy"] == pytest.approx(accuracy, abs=1e-12), language
        assert got["macro_f1"] == pytest.approx(macro_f1, abs=1e-12), language
        assert got["n"] == len(frame)
    means = [results["languages"][c]["accuracy"] for c in ("deu_Latn", "eng_Latn")]
    assert results["mean"]["accuracy"] == pytest.approx(sum(means) / 2, abs=1e-12)


def test_hand_metrics_are_right():
    # gold 0 0 1 1 2, pred 0 1 1 1 0: class 0 TP1 FP1 FN1 -> 0.5; class 1 TP2 FP1 FN0 -> 0.8; class 2 -> 0
    assert hand_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3) == (0.6, pytest.approx((0.5 + 0.8 + 0) / 3))


def test_the_best_dev_loss_epoch_is_kept_not_the_last(tiny_model_dir, toy_task, tmp_path):
    # a large learning rate: the dev loss is lowest after epoch 1 and never returns there
    config = TrainConfig(task="toy", model=str(tiny_model_dir("bert")), method=InputPromptConfig(prompt_length=2),
                         epochs=5, batch_size=8, lr=1.0, seed=1)
    run = fit(config, progress=False)
    losses = {c["epoch"]: c["dev_loss"] for c in run.curve}
    best, last = min(losses, key=losses.get), max(losses)
    assert best != last and losses[best] < losses[last] - 1e-3, losses  # else the test could not tell
    assert run.info["best_epoch"] == best
    frame = toy_task.load("dev", config.train_language or "eng_Latn")
    for model in (run, load(run.save(tmp_path / "run"))):
        logits = logits_of(model, frame).astype(np.float64)
        gold = frame["label"].to_numpy()
        shifted = logits - logits.max(-1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(len(gold)), gold]))
        assert loss == pytest.approx(losses[best], abs=1e-5) and abs(loss - losses[last]) > 1e-3


def test_run_predict_returns_label_names(english_run, toy_task, tmp_path):
    texts = ["alpha w1 w2 w3", "beta w4", "alpha w25 w30", "beta w21 w22 w23"]
    labels = english_run.predict(texts)
    assert isinstance(labels, list) and all(isinstance(x, str) for x in labels)
    frame = toy_task.load("test", "eng_Latn").head(0)
    frame = frame.reindex(range(len(texts)))
    frame["text"], frame["label"] = texts, 0
    expected = [toy_task.label_names[i] for i in logits_of(english_run, frame).argmax(-1)]
    assert labels == expected and labels == ["alpha", "beta", "alpha", "beta"]  # the trained rule itself
    assert load(english_run.save(tmp_path / "run")).predict(texts) == labels


def test_default_decoder_label_words_follow_sib200_labels():
    from xlprompt.tasks import get_task

    sib = get_task("sib200")
    assert list(sib.label_names) == ["science/technology", "travel", "politics", "sports", "health",
                                     "entertainment", "geography"]
    # pinned label by label: a reordered list would pass a length check but score every class by another
    # class's word
    assert {family: dict(zip(sib.label_names, row)) for family, row in sib.label_words.items()} == {
        "xglm": {"science/technology": "science", "travel": "travel", "politics": "politics", "sports": "sports",
                 "health": "health", "entertainment": "entertainment", "geography": "earth"},
        "bloom": {"science/technology": "science", "travel": "travel", "politics": "government", "sports": "play",
                  "health": "health", "entertainment": "fun", "geography": "earth"},
    }


@pytest.mark.slow
def test_quickstart_and_its_summary(tmp_path):
    """`xlprompt quickstart` on a tiny setting (the offline default model, 1 shot per class, 1 epoch, two
    languages), and every number of its summary recomputed from results.json."""
    from typer.testing import CliRunner

    from xlprompt.cli import app

    out = tmp_path / "qs"
    res = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--shots", "1", "--epochs", "1",
                                   "--prompt-length", "2", "--langs", "eng_Latn,deu_Latn"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    langs = results["languages"]
    assert set(langs) == {"eng_Latn", "deu_Latn"} and all(m["n"] == 204 for m in langs.values())
    report = (out / "report.md").read_text()
    text = " ".join(res.output.split())
    eng, deu = langs["eng_Latn"]["accuracy"], langs["deu_Latn"]["accuracy"]
    for line in (f"eng_Latn (training language) accuracy: {eng:.3f}",
                 f"mean accuracy over 2 languages: {(eng + deu) / 2:.3f}",
                 f"mean zero-shot accuracy over 1 other languages: {deu:.3f}"):
        assert line in report and line in text, line
    ranked = sorted(langs, key=lambda c: -langs[c]["accuracy"])
    assert f"best: {ranked[0]} {langs[ranked[0]]['accuracy']:.3f}" in report
    assert load(out / "run").config.shots == 1
    assert (out / "results.csv").is_file() and results["run"] == str(out / "run")
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.csv", "results.json", "run"]
    # an interrupted second quickstart (here: evaluation fails) leaves the first one's outputs whole
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    from unittest import mock

    with mock.patch("xlprompt.evaluation.evaluate.evaluate", side_effect=KeyboardInterrupt):
        res = CliRunner().invoke(app, ["quickstart", "--out", str(out), "--shots", "1", "--epochs", "1",
                                       "--prompt-length", "3", "--langs", "eng_Latn,deu_Latn"])
    assert res.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert load(out / "run").config.method.prompt_length == 2  # still the first quickstart's run


def test_bf16_against_fp32(english_run, toy_task):
    """bf16 autocast (GPU-meant, runs on CPU too) against fp32 on the same rows: it really computes in
    bf16 (the logits differ), stays within bf16's rounding, and labels the rows as fp32 does."""
    import warnings

    import torch

    from xlprompt.engine.torch_engine import precision_context

    frames = [toy_task.load("test", lang) for lang in ("eng_Latn", "deu_Latn")]
    fp32 = np.concatenate([logits_of(english_run, f) for f in frames])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with precision_context("bf16", english_run.model, torch.device("cpu")):
            bf16 = np.concatenate([logits_of(english_run, f) for f in frames]).astype(np.float64)
    assert not np.array_equal(bf16, fp32)
    # bf16 keeps 8 significant bits (relative rounding 2^-8 per op); a few layers of tiny model: 5% of scale
    scale = np.abs(fp32).max()
    assert np.abs(bf16 - fp32).max() <= 0.05 * scale, (np.abs(bf16 - fp32).max(), scale)
    assert (bf16.argmax(-1) == fp32.argmax(-1)).mean() >= 0.95  # 80 rows: at most 4 close calls flip
