"""Token classification: CoNLL-U / PAN-X readers, seqeval metrics, tag alignment under prompts, UD POS and
PAN-X end to end on a tiny model, loaders against the shared data."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from xlprompt import TrainConfig, fit, load
from xlprompt.cli import app
from xlprompt.data.conllu import parse_conllu
from xlprompt.data.panx import parse_panx
from xlprompt.core.errors import XlpromptError
from xlprompt.evaluation.evaluate import evaluate, predict_outputs, results_table, write_results
from xlprompt.prompts.config import DeepPromptConfig, InputPromptConfig
from xlprompt.tasks import Task, get_task, register_task
from xlprompt.tasks.tagging import TokenTagging, tagging_metrics

from conftest import SHARED_DATA, WORDS, tiny_tokenizer

CONLLU = """# sent_id = 1
# text = Wir gehen im Park.
1\tWir\twir\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tgehen\tgehen\tVERB\t_\t_\t0\troot\t_\t_
3-4\tim\t_\t_\t_\t_\t_\t_\t_\t_
3\tin\tin\tADP\t_\t_\t5\tcase\t_\t_
4\tdem\tder\tDET\t_\t_\t5\tdet\t_\t_
5\tPark\tPark\tNOUN\t_\t_\t2\tobl\t_\tSpaceAfter=No
5.1\tgehen\tgehen\tVERB\t_\t_\t_\t_\t2:conj\t_
6\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

# text = con người
1\tcon người\tcon người\tNOUN\t_\t_\t0\troot\t_\t_"""  # no closing blank line; a word with a space


def test_conllu_keeps_syntactic_words_and_skips_ranges_and_empty_nodes():
    sentences = parse_conllu(CONLLU.splitlines(keepends=True))
    assert sentences == [(["Wir", "gehen", "in", "dem", "Park", "."], ["PRON", "VERB", "ADP", "DET", "NOUN", "PUNCT"]),
                         (["con người"], ["NOUN"])]
    with pytest.raises(XlpromptError, match=r"x\.conllu, line 2: expected 10"):
        parse_conllu(["# c\n", "1\tWir\twir\tPRON\t_\n"], "x.conllu")


def test_panx_reader_splits_on_blank_lines():
    text = "R.H.\tB-ORG\r\nSaunders\tI-ORG\r\n\r\n\r\nParis\tB-LOC\n"  # CRLF, double blank, no final blank
    assert parse_panx(text.splitlines(keepends=True)) == [(["R.H.", "Saunders"], ["B-ORG", "I-ORG"]),
                                                          (["Paris"], ["B-LOC"])]
    with pytest.raises(XlpromptError, match=r"dev\.tsv, line 2"):
        parse_panx(["a\tO\n", "b O\n"], "dev.tsv")


def test_span_f1_and_accuracy_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"]]
    # gold entities PER, LOC, ORG(2 words); predicted PER (right), ORG (wrong type), ORG (1 word: wrong span)
    m = tagging_metrics(gold, pred)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(5 / 7) and m["n"] == 7
    # one of two entities found: P 1, R 1/2, F1 2/3; a missing prediction (None) is "O" and a wrong word
    m = tagging_metrics([["B-PER", "O", "B-LOC", "I-LOC"]], [["B-PER", "O", None, None]])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == pytest.approx((1, 0.5, 2 / 3, 0.5))
    # seqeval's default (conlleval) mode: an entity may start with I-, as XTREME scores PAN-X
    assert tagging_metrics([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])["f1"] == 1.0
    assert tagging_metrics([["O"]], [["O"]])["f1"] == 0.0  # no entities anywhere: 0, not a warning


# a toy tagging task: tag A for w0-w19, B for w20-w39, so a model can only learn it if tags sit on their words
TAGS = ("A", "B")


def toy_tag_frame(n, seed, lo=0, hi=40):
    rng = np.random.default_rng(seed)
    tokens, tags = [], []
    for _ in range(n):
        ids = rng.choice(np.arange(lo, hi), size=rng.integers(2, 9), replace=False)  # distinct words
        words = [f"w{i}" if rng.random() < 0.7 else f"w{i}-w{(i + 1) % 40}" for i in ids]  # some 3-piece words
        tokens.append(words)
        tags.append(["A" if i < 20 else "B" for i in ids])
    return pd.DataFrame({"tokens": tokens, "tags": tags, "label": [0] * n})


@pytest.fixture(scope="module")
def toytag():
    sizes = {"train": (64, 1), "dev": (16, 2), "test": (32, 3)}

    def load_split(split, language, data_dir=None):
        n, seed = sizes[split]
        return toy_tag_frame(n, seed + (0 if language == "en" else 100))

    return register_task(Task(name="toytag", label_names=TAGS, load=load_split,
                              languages=lambda data_dir=None: ["de", "en"], train_language="en",
                              format=TokenTagging(TAGS), description="toy tagging task for tests"))


def test_encode_puts_each_tag_on_its_first_subtoken_and_windows_long_sentences(toytag):
    tok = tiny_tokenizer("encoder")
    frame = pd.DataFrame({"tokens": [["w1-w2", "w3", "w30"], [f"w{i}" for i in range(12)]],
                          "tags": [["A", "A", "B"], ["A"] * 10 + ["B"] * 2]})
    enc = toytag.encode(tok, frame, max_length=7)  # 5 words per window: sentence 2 needs 3 windows
    assert enc.extra["sentence"] == [0, 1, 1, 1]
    ids = tok.convert_tokens_to_ids
    assert enc.token_ids[0] == ids(["<s>", "w1", "<unk>", "w2", "w3", "w30", "</s>"])
    assert enc.labels[0] == [-100, 0, -100, -100, 0, 1, -100]
    assert enc.extra["word_index"][0] == [-1, 0, -1, -1, 1, 2, -1]
    assert [w for row in enc.extra["word_index"][1:] for w in row if w >= 0] == list(range(12))
    # outputs that are one-hot on the targets score perfectly; n counts words, not rows or windows
    outputs = [np.eye(2)[np.maximum(np.asarray(y), 0)] for y in enc.labels]
    assert toytag.score(frame, enc, outputs) == {"accuracy": 1.0, "n": 15}
    with pytest.raises(XlpromptError, match="unknown tag 'C'"):
        toytag.encode(tok, pd.DataFrame({"tokens": [["w1"]], "tags": [["C"]]}), 8)


ALIGNMENT = [("xlm-roberta", DeepPromptConfig(prompt_length=3)), ("gpt2", DeepPromptConfig(prompt_length=3)),
             ("xlm-roberta", InputPromptConfig(prompt_length=3)), ("xlm-roberta", InputPromptConfig(prompt_length=3, position="start")),
             ("xglm", InputPromptConfig(prompt_length=3)), ("xglm", InputPromptConfig(prompt_length=3, position="start")),
             ("bloom", InputPromptConfig(prompt_length=3, position="start"))]


@pytest.mark.parametrize("family,method", ALIGNMENT, ids=lambda x: getattr(x, "type", x))
def test_tag_of_word_i_lands_on_word_i_under_prompts(family, method, tiny_model_dir, toytag):
    from xlprompt.models.classifier import build_classifier

    model = build_classifier(TrainConfig(task="toytag", model=str(tiny_model_dir(family)), method=method),
                             toytag).eval()
    tok = model.backbone.tokenizer
    frame = toy_tag_frame(6, seed=7)
    enc = toytag.encode(tok, frame, 128)
    batch = model.collator()(enc, list(range(len(enc))))
    caught = []
    hook = model.backbone.register_forward_hook(lambda module, args, out: caught.append(out))
    with torch.no_grad():
        logits = model(batch)
    hook.remove()
    hidden = caught[0]
    assert model.num_slots == (3 if isinstance(method, InputPromptConfig) else 0)
    for r, (words, tags) in enumerate(zip(frame["tokens"], frame["tags"])):
        # targets: exactly one per word, at that word's first sub-token, in word order
        at = torch.nonzero(batch.labels[r] != -100).flatten().tolist()
        assert [TAGS[y] for y in batch.labels[r, at]] == tags
        for word, t in zip(words, at):
            # found independently: the one non-prompt position that holds the word's first piece
            first = tok(word, add_special_tokens=False)["input_ids"][0]
            where = torch.nonzero((batch.input_ids[r] == first) & ~batch.prompt_mask[r]).flatten()
            assert where.tolist() == [int(batch.token_positions[r, t])]
            # and the head's output for the word is computed from the hidden state there
            expected = model.head.linear(hidden[r, where[0]])
            assert torch.allclose(logits[r, t], expected, atol=1e-5)


def tagging_config(model_dir, task, **kw):
    base = dict(task=task, model=str(model_dir), method=DeepPromptConfig(prompt_length=4), epochs=1, batch_size=8,
                lr=0.05, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("family,method,epochs", [("xlm-roberta", DeepPromptConfig(prompt_length=4), 6),
                                                  ("xglm", InputPromptConfig(prompt_length=4, position="start"), 4)],
                         ids=["deep-encoder", "input-start-decoder"])
def test_tags_are_learnable_through_prompts(family, method, epochs, tiny_model_dir, toytag):
    """Tags shifted off their words would be unlearnable (neighbouring words are independent): trained with
    a prompt, the tagger must be right on another language's sentences. The tiny random models lose word
    identity in their last layer (a linear probe on it reaches ~0.7), so the model trains with the prompt
    here (no model freezing, as `--no-freeze`); the frozen-model path is pinned by the test above."""
    run = fit(tagging_config(tiny_model_dir(family), "toytag", method=method, epochs=epochs, shots=48,
                             freeze_model=False, model_lr=0.01), progress=False)
    assert run.info["train_examples"] == 48  # shots = sentences
    results = evaluate(run, "all", progress=False)
    assert results["languages"]["de"]["accuracy"] > 0.9, results["languages"]


def write_tiny_data(root):
    """The shared data's layout with a few hand-written sentences of the tiny tokenizer's words."""
    rng = np.random.default_rng(0)
    upos = ("NOUN", "VERB", "ADJ", "PUNCT")
    for lang, splits in {"en": ("train", "dev", "test"), "de": ("test",), "yo": ("test",)}.items():
        (root / "udpos" / lang).mkdir(parents=True)
        (root / "ner" / "panx" / lang).mkdir(parents=True)
        for split in splits:
            blocks = []
            for s in range(12):
                n = int(rng.integers(2, 7))
                lines = [f"{i + 1}\tw{rng.integers(40)}\t_\t{upos[rng.integers(4)]}\t_\t_\t0\tdep\t_\t_" for i in range(n)]
                blocks.append(f"# sent_id = {s}\n1-2\tw0w1\t_\t_\t_\t_\t_\t_\t_\t_\n" + "\n".join(lines) + "\n")
            (root / "udpos" / lang / f"{split}.conllu").write_text("\n".join(blocks) + "\n")
        ner = ["w1\tB-PER\nw2\tI-PER\nw3\tO\nw4\tB-LOC\n", "w5\tO\nw6\tB-ORG\n", "w7\tO\n"] * 4
        for split in ("train", "dev") if lang == "en" else ("dev",):  # PAN-X: labelled dev everywhere
            (root / "ner" / "panx" / lang / f"{split}.tsv").write_text("\n".join(ner))


@pytest.mark.parametrize("task,metrics", [("udpos", {"accuracy"}), ("panx", {"f1", "precision", "recall", "accuracy"})])
def test_task_end_to_end_on_a_tiny_model(task, metrics, tiny_model_dir, tmp_path):
    write_tiny_data(tmp_path / "data")
    run = fit(tagging_config(tiny_model_dir("xlm-roberta"), task, shots=8, data_dir=str(tmp_path / "data")),
              progress=False)
    assert run.info["train_examples"] == 8 and {f"dev_{m}" for m in metrics} <= set(run.curve[0])
    results = evaluate(run, "all", progress=False)
    assert set(results["languages"]) == {"de", "en", "yo"}
    tagging = get_task(task)
    for code, m in results["languages"].items():
        assert set(m) == metrics | {"n"}
        # the numbers are the model's own word predictions scored by hand (seqeval for spans)
        frame = tagging.load(tagging.eval_split, code, str(tmp_path / "data"))
        encoded = tagging.encode(run.model.backbone.tokenizer, frame, run.config.max_length)
        outputs = predict_outputs(run.model, encoded, 64)
        predicted = tagging.format.predict_tags(frame, encoded, outputs)
        pairs = [(g, p) for gold, pred in zip(frame["tags"], predicted) for g, p in zip(gold, pred)]
        assert m["n"] == len(pairs) and m["accuracy"] == pytest.approx(sum(g == p for g, p in pairs) / len(pairs))
        if "f1" in metrics:
            from seqeval.metrics import f1_score

            filled = [[t or "O" for t in sentence] for sentence in predicted]
            assert m["f1"] == pytest.approx(f1_score([list(t) for t in frame["tags"]], filled, zero_division=0))
    assert results["languages"]["en"]["n"] == sum(len(w) for w in get_task(task).load(
        get_task(task).eval_split, "en", str(tmp_path / "data"))["tokens"])
    assert metrics <= set(results["mean"])
    write_results(results, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["languages"]["en"] == results["languages"]["en"]
    results_table(results)  # the CLI's default sort (accuracy) exists for every tagging task
    assert task in CliRunner().invoke(app, ["tasks"]).output
    run.save(tmp_path / "run")  # the trained head is saved and reloaded
    assert evaluate(load(tmp_path / "run"), "en", progress=False)["languages"] == \
        evaluate(run, "en", progress=False)["languages"]


needs_data = pytest.mark.skipif(not (SHARED_DATA / "udpos").is_dir() or not (SHARED_DATA / "ner").is_dir(),
                                reason="shared data not present")


@needs_data
def test_shared_data_counts_match_the_readmes():
    data = str(SHARED_DATA)
    udpos, panx = get_task("udpos"), get_task("panx")
    assert len(udpos.languages(data)) == 33 and len(panx.languages(data)) == 39  # English + 32 / + 38 here
    # sentences / syntactic words (integer-id lines): de has multi-word tokens, fi and nl empty nodes
    for split, lang, sentences, words in [("dev", "en", 2002, 25148), ("test", "en", 2077, 25096),
                                          ("test", "de", 977, 16498), ("test", "fi", 1555, 21070),
                                          ("test", "nl", 596, 11046), ("test", "mr", 47, 412)]:
        frame = udpos.load(split, lang, data)
        assert (len(frame), sum(map(len, frame["tokens"]))) == (sentences, words), (split, lang)
    assert set(udpos.load("test", "de", data)["tags"].explode()) <= set(udpos.label_names)
    for split, lang, sentences in [("train", "en", 20000), ("dev", "en", 10000), ("dev", "yo", 100)]:
        assert len(panx.load(split, lang, data)) == sentences
    with pytest.raises(XlpromptError, match="de has only: dev"):
        panx.load("test", "de", data)
