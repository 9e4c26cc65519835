"""One forward pass over rows of different prompts and heads gives each row what its run alone gives."""
import json
import random

import numpy as np
import pytest

from xlprompt import TrainConfig, load
from xlprompt.data.collate import encode_texts
from xlprompt.core.errors import XlpromptError
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.models.backbone import Backbone
from xlprompt.prompts.config import FinetuneConfig, InputPromptConfig
from xlprompt.serving import PromptBank
from xlprompt.serving.multi import pack_rows

from serving_runs import RUNS, TEXTS, runs_per_family, train_run

MIXED_FAMILIES = ["xlm-roberta", "bert", "xglm", "gpt2", "bloom"]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, toy_task, tmp_path_factory):
    return runs_per_family(tiny_model_dir, tmp_path_factory, "runs")


def alone(run_dir, backbone, texts):
    """The existing single-run path: Run.load onto the backbone, then predict_encoded."""
    run = load(run_dir, backbone=backbone)
    enc = encode_texts(backbone.tokenizer, texts, [0] * len(texts), run.config.max_length)
    return predict_encoded(run.model, enc, batch_size=4)


def bank_for(family, tiny_model_dir, runs, max_padding=1.0):
    """max_padding=1: every batch is one forward pass, whatever its rows' lengths."""
    bank = PromptBank(Backbone.load(str(tiny_model_dir(family))), max_padding=max_padding, precision="fp32")
    for name, path in runs(family).items():
        bank.add(name, path)
    return bank


@pytest.mark.parametrize("family", MIXED_FAMILIES)
def test_mixed_batch_matches_each_run_alone(family, tiny_model_dir, runs):
    bank = bank_for(family, tiny_model_dir, runs)
    names = list(RUNS)
    # every run gets several rows, interleaved, of different lengths (some past p1's max_length of 6)
    rows = [(names[i % len(names)], TEXTS[(i * 5) % len(TEXTS)]) for i in range(30)]
    random.Random(0).shuffle(rows)
    predictions = bank.classify([n for n, _ in rows], [t for _, t in rows])
    assert len(predictions) == len(rows) and bank.forward_passes == 1
    expected = {}
    for name in names:
        texts = [t for n, t in rows if n == name]
        expected[name] = iter(alone(runs(family)[name], bank.backbone, texts))
    num_labels = {"toy": 2, "toy3": 3}
    for (name, text), got in zip(rows, predictions):
        want = next(expected[name])
        assert len(got.logits) == num_labels[RUNS[name][0]], (name, text)
        np.testing.assert_allclose(got.logits, want, atol=1e-5, rtol=0, err_msg=f"{family} {name} {text!r}")
        assert got.label_index == int(np.argmax(want))
        assert got.label == bank.get(name).label_names[got.label_index]
        assert sum(got.scores) == pytest.approx(1.0)
        assert got.scores[got.label_index] == max(got.scores)


@pytest.mark.parametrize("family", ["xlm-roberta", "xglm"])
@pytest.mark.parametrize("subset", [["d2", "d4"], ["p1", "p3", "p5"], ["d4", "p5"], ["p3"]])
def test_subsets_and_row_order(family, subset, tiny_model_dir, runs):
    """Deep-only batches (prefixes of two lengths), input-only, one of each, one run: and reversing the rows
    reverses the answers (each row's result follows it, whatever else is in the batch)."""
    bank = bank_for(family, tiny_model_dir, runs)
    names = [subset[i % len(subset)] for i in range(len(TEXTS))]
    forward = bank.classify(names, TEXTS)
    backward = bank.classify(names[::-1], TEXTS[::-1])
    for a, b in zip(forward, backward[::-1]):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    for name in subset:
        texts = [t for n, t in zip(names, TEXTS) if n == name]
        got = [p.logits for n, p in zip(names, forward) if n == name]
        np.testing.assert_allclose(np.array(got), alone(runs(family)[name], bank.backbone, texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_padding", [0.0, 0.25])
def test_length_packed_passes_give_the_same_rows(max_padding, tiny_model_dir, runs):
    """Splitting a batch into length-sorted passes changes nothing but the number of passes."""
    one = bank_for("xglm", tiny_model_dir, runs)
    packed = bank_for("xglm", tiny_model_dir, runs, max_padding=max_padding)
    names = [list(RUNS)[i % len(RUNS)] for i in range(len(TEXTS))]
    for a, b in zip(one.classify(names, TEXTS), packed.classify(names, TEXTS)):
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=0)
    assert one.forward_passes == 1 and packed.forward_passes > 1


def test_pack_rows():
    assert pack_rows([5, 5, 5], 0.0) == [[0, 1, 2]]
    assert pack_rows([10, 2, 9, 3], 0.0) == [[1], [3], [2], [0]]
    assert pack_rows([10, 2, 9, 3], 0.25) == [[1, 3], [2, 0]]  # 2+3 in width 3: 1/6 padding; 9+10: 1/20
    assert pack_rows([10, 2, 9, 3], 1.0) == [[1, 3, 2, 0]]
    groups = pack_rows([7, 1, 30, 12, 12, 4, 29, 2], 0.3)
    assert sorted(r for g in groups for r in g) == list(range(8))
    lengths = [7, 1, 30, 12, 12, 4, 29, 2]
    for g in groups:
        width = max(lengths[r] for r in g)
        assert len(g) == 1 or 1 - sum(lengths[r] for r in g) / (width * len(g)) <= 0.3
    with pytest.raises(XlpromptError, match="max_padding"):
        PromptBank(None, max_padding=2)


def test_rows_differ_by_prompt(tiny_model_dir, runs):
    """The same text under different prompts of the same task gets different logits (prompts are applied)."""
    bank = bank_for("xlm-roberta", tiny_model_dir, runs)
    got = bank.classify(["p1", "p5", "d4"], ["alpha w1 w2"] * 3)
    assert not np.allclose(got[0].logits, got[1].logits) and not np.allclose(got[1].logits, got[2].logits)


def test_info_and_remove(tiny_model_dir, runs):
    bank = bank_for("bert", tiny_model_dir, runs)
    info = {r.name: r.info() for r in bank.runs()}
    assert info["d4"]["method"] == "deep_prompt" and info["d4"]["prompt_length"] == 4
    assert info["p3"]["labels"] == ["b", "a", "y"] and info["h0"]["prompt_length"] == 0
    bank.remove("p3")
    assert "p3" not in bank.names()
    with pytest.raises(XlpromptError, match="Unknown prompt 'p3'"):
        bank.classify(["p3"], ["alpha"])
    with pytest.raises(KeyError):
        bank.remove("p3")


def test_rejected_runs(tiny_model_dir, runs, tmp_path):
    model = tiny_model_dir("xlm-roberta")
    bank = PromptBank(Backbone.load(str(model)), precision="fp32")
    bank.add("p1", runs("xlm-roberta")["p1"])
    with pytest.raises(XlpromptError, match="already loaded"):
        bank.add("p1", runs("xlm-roberta")["p5"])
    with pytest.raises(XlpromptError, match="not usable"):
        bank.add("bad name/x", runs("xlm-roberta")["p5"])
    with pytest.raises(XlpromptError, match="not a complete xlprompt run folder"):
        bank.add("nothing", tmp_path / "missing")
    # a run whose backbone trained (finetune, or a prompt with --no-freeze) cannot share the frozen model
    finetuned = train_run(model, tmp_path / "ft", "toy", FinetuneConfig())
    with pytest.raises(XlpromptError, match="trained the model's own weights"):
        bank.add("ft", finetuned)
    unfrozen = train_run(model, tmp_path / "unfrozen", "toy", InputPromptConfig(prompt_length=2), freeze_model=False)
    with pytest.raises(XlpromptError, match="trained the model's own weights"):
        bank.add("unfrozen", unfrozen)
    # another model: a run trained on BERT does not go onto XLM-R
    with pytest.raises(XlpromptError, match="all prompts must share one model"):
        bank.add("bert", runs("bert")["p1"])
    # tagging / QA runs: checked from the config, before any weights load
    tagging = tmp_path / "tagging"
    tagging.mkdir()
    (tagging / "config.json").write_text(json.dumps(TrainConfig(task="udpos", model=str(model)).to_dict()))
    (tagging / "run.json").write_text("{}")
    with pytest.raises(XlpromptError, match="sentence and sentence-pair classification runs only"):
        bank.add("tagging", tagging)
    assert bank.names() == ["p1"]
    with pytest.raises(XlpromptError, match="one prompt name"):
        bank.classify(["p1", "p1"], ["alpha"])


def test_bank_from_runs_uses_first_runs_model(tiny_model_dir, runs):
    folders = runs("gpt2")
    bank = PromptBank.from_runs({"a": folders["p1"], "b": folders["d2"]}, precision="fp32")
    assert bank.backbone.kind == "decoder" and bank.names() == ["a", "b"]
    with pytest.raises(XlpromptError, match="at least one run folder"):
        PromptBank.from_runs({})
