"""Extractive QA: character offsets through a real SentencePiece tokenizer in non-Latin scripts, windows with
stride, spans under every prompt layout, MLQA's normalisation and EM/F1 by hand, both tasks end to end."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA
from xlprompt.core.errors import XlpromptError
from xlprompt.tasks.qa import (ExtractiveQA, best_span, exact_match, f1_score, normalize_answer, qa_metrics,
                               span_text)

needs_data = pytest.mark.skipif(not (SHARED_DATA / "xquad").is_dir(), reason="no shared data folder")

# answers chosen to start and end on piece boundaries of the e5 / XLM-R vocabulary
CASES = [
    ("ذهب محمد إلى القاهرة يوم الجمعة مع أخيه.", "إلى أين ذهب محمد؟", "القاهرة"),
    ("ذهب محمد إلى القاهرة يوم الجمعة مع أخيه.", "متى ذهب؟", "يوم الجمعة"),
    ("ذهب محمد إلى القاهرة يوم الجمعة مع أخيه.", "ماذا فعل محمد؟", "ذهب"),  # a bare "▁" piece before it
    ("राम ने दिल्ली में एक किताब खरीदी।", "राम ने क्या खरीदा?", "एक किताब"),
    ("长城位于中国北部，全长两万多公里。", "长城有多长？", "两万多公里"),
    ("我在北京大学学习中文。", "我学习什么？", "中文"),
    ("ฉันไปกรุงเทพมหานครเมื่อวานนี้", "ฉันไปไหน", "กรุงเทพมหานคร"),
    ("Пётр Первый основал Санкт-Петербург в 1703 году.", "Когда?", "1703 году"),
    ("Ο Σωκράτης γεννήθηκε στην Αθήνα το 470 π.Χ.", "Πού γεννήθηκε;", "Αθήνα"),
]


def qa_frame(cases, language="xx") -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"q{i}" for i in range(len(cases))], "title": "t", "context": [c for c, _, _ in cases],
        "question": [q for _, q, _ in cases], "answers": [[a] for _, _, a in cases],
        "answer_starts": [[c.index(a)] for c, _, a in cases], "language": language, "label": 0})


def oracle_outputs(encoded) -> list[np.ndarray]:
    """Scores a perfect model would give: the labelled span in windows that hold the answer."""
    out = []
    for ids, (s, e) in zip(encoded.token_ids, encoded.labels):
        o = np.zeros((2, len(ids)), np.float32)
        if s:
            o[0, s], o[1, e] = 10, 10
        out.append(o)
    return out


@pytest.fixture(scope="module")
def e5_tokenizer():
    from transformers import AutoTokenizer

    from xlprompt.models.offline_default import offline_default_dir

    return AutoTokenizer.from_pretrained(offline_default_dir())


def test_offsets_round_trip_in_non_latin_scripts(e5_tokenizer):
    frame = qa_frame(CASES)
    enc = ExtractiveQA().encode(e5_tokenizer, frame, 128)
    assert len(enc) == len(CASES)  # short contexts: one window each
    for i, (start, end) in enumerate(enc.labels):
        offsets, context = enc.extra["offsets"][i], CASES[i][0]
        assert enc.extra["example_ids"][i] == f"q{i}"
        assert 0 < start <= end < len(enc.token_ids[i])
        assert span_text(context, offsets, start, end) == CASES[i][2]
        # offsets only on context tokens: the question and special tokens carry -1
        question = e5_tokenizer(CASES[i][1], add_special_tokens=False)["input_ids"]
        assert (offsets[:len(question) + 1] == -1).all() and (offsets[-1] == -1).all()
    assert ExtractiveQA().score(None, frame, enc, oracle_outputs(enc))["exact_match"] == 1.0


def test_answer_inside_a_piece_gives_the_covering_piece(e5_tokenizer):
    # "北京" is inside the piece "在北京": token-level extraction can only return the whole piece
    frame = qa_frame([("我在北京大学学习中文。", "我在哪里？", "北京")])
    enc = ExtractiveQA().encode(e5_tokenizer, frame, 128)
    (start, end), = enc.labels
    assert span_text(frame.context[0], enc.extra["offsets"][0], start, end) == "在北京"


def test_long_contexts_are_windowed_with_stride_and_answers_survive(e5_tokenizer):
    facts = ["محمد ذهب إلى القاهرة مع أخيه الكبير.", "राम ने दिल्ली में एक पुरानी किताब खरीदी।",
             "长城位于中国北部，全长两万多公里。", "ฉันไปกรุงเทพมหานครเมื่อวานนี้ กับเพื่อน",
             "Пётр Первый основал Санкт-Петербург в 1703 году.", "Η πόλη της Αθήνας έχει πολλά μουσεία."]
    answers = ["القاهرة مع أخيه", "दिल्ली", "两万多公里", "กรุงเทพมหานคร", "Санкт-Петербург в 1703 году",
               "πολλά μουσεία"]
    context = " ".join(facts * 3)
    cases = []
    for k, answer in enumerate(answers):  # every copy of every fact, so answers sit everywhere
        at = -1
        for copy in range(3):
            at = context.index(answer, at + 1)
            cases.append((context, f"سؤال {k}-{copy}?", answer, at))
    frame = qa_frame([c[:3] for c in cases])
    frame["answer_starts"] = [[c[3]] for c in cases]
    fmt = ExtractiveQA(max_length=48, stride=16)
    enc = fmt.encode(e5_tokenizer, frame, 16)  # the format's 48 wins over a smaller run max_length
    assert max(enc.lengths()) == 48
    found, cut = {}, 0
    for i, (start, end) in enumerate(enc.labels):
        example, offsets = int(enc.extra["example_index"][i]), enc.extra["offsets"][i]
        lo, hi = offsets[offsets[:, 0] >= 0, 0].min(), offsets[:, 1].max()
        a_start = frame.answer_starts[example][0]
        a_end = a_start + len(frame.answers[example][0])
        if (start, end) == (0, 0):
            cut += lo < a_end and a_start < hi  # part of the answer is in this window, not all of it
        else:
            assert span_text(context, offsets, start, end) == frame.answers[example][0]
            found[example] = found.get(example, 0) + 1
    assert sorted(found) == list(range(len(cases)))
    assert max(found.values()) >= 2 and cut >= 1  # overlapping windows both hold some answers; some cut one
    assert (np.bincount(enc.extra["example_index"]) > 3).all()
    assert fmt.score(None, frame, enc, oracle_outputs(enc)) == {"exact_match": 1.0, "f1": 1.0, "n": len(cases)}


def test_best_span_is_valid_and_aggregated_over_windows():
    offsets = np.array([[-1, -1], [-1, -1], [0, 3], [3, 7], [7, 11], [11, 14], [-1, -1]])
    scores = np.zeros((2, 7))
    scores[0, 0] = scores[1, 0] = 50        # question / special tokens never win
    scores[0, 5], scores[1, 2] = 9, 8       # start after end: invalid
    scores[1, 5] = scores[0, 2] = -20
    scores[0, 3], scores[1, 4] = 5, 4
    assert best_span(scores, offsets, 30)[1:] == (3, 4)
    scores[0, 5] = scores[1, 2] = 0
    scores[0, 2], scores[1, 5] = 7, 7      # (2, 5) is 4 tokens: excluded with max_tokens=2
    assert best_span(scores, offsets, 2)[1:] == (3, 4)
    assert best_span(scores, offsets, 4)[1:] == (2, 5)
    # two windows of one question: the higher-scoring one wins
    context = "The cat sat."
    frame = qa_frame([(context, "who?", "cat")])
    enc = type("E", (), {})()
    enc.extra = {"example_index": np.array([0, 0]), "offsets": [offsets[:4], np.array([[-1, -1], [3, 7], [7, 11]])]}
    low, high = np.zeros((2, 4)), np.zeros((2, 3))
    low[:, 2], high[:, 1] = 1, 3
    assert ExtractiveQA().predict_answers(frame, enc, [low, high]) == ["cat"]


def test_mlqa_normalisation_by_hand():
    assert normalize_answer("The Cat, sat!", "en") == "cat sat"
    assert normalize_answer("«El perro» y la casa", "es") == "perro y casa"
    assert normalize_answer("Der Hund, die Katze und das Haus", "de") == "hund katze und haus"
    assert normalize_answer("einem Mann", "de") == "mann"
    assert normalize_answer("những cái bàn của tôi", "vi") == "bàn tôi"
    # MLQA removes every "ال", also inside a word ("مال" -> "م")
    assert normalize_answer("ذهب إلى القاهرة", "ar") == "ذهب إلى قاهرة"
    assert normalize_answer("مال", "ar") == "م"
    assert normalize_answer("राम, दिल्ली।", "hi") == "राम दिल्ली"          # danda is punctuation
    assert normalize_answer("北京大学，2020年", "zh") == "北 京 大 学 2020 年"
    assert normalize_answer("$100 €100", "en") == "100 €100"             # $ is in string.punctuation, € is not
    assert normalize_answer("The Cat", "th") == "the cat"                # no rules known: no articles
    assert normalize_answer("北京", "zho_Hans") == "北 京"                 # FLORES-style codes work too


def test_exact_match_and_f1_by_hand():
    assert exact_match("The Cat.", "cat", "en") == 1.0
    assert f1_score("the big red cat", "red cat sat", "en") == pytest.approx(2 / 3)  # 2 common of 3 and 3
    assert f1_score("北京大学", "北京", "zh") == pytest.approx(2 / 3)                  # P 2/4, R 2/2
    assert f1_score("北京大学", "北京", "en") == 0.0                                   # one word vs one word
    assert f1_score("los perros", "perros", "es") == 1.0
    assert f1_score("القاهرة", "قاهرة", "ar") == 1.0
    assert f1_score("", "cat", "en") == 0.0
    m = qa_metrics(["cat", "北京大学"], [["dog", "the cat"], ["北京"]], ["en", "zh"])
    assert m == {"exact_match": 0.5, "f1": pytest.approx((1 + 2 / 3) / 2), "n": 2}


@pytest.mark.parametrize("family,method", [
    ("xlm-roberta", {"type": "input_prompt", "prompt_length": 3}),
    ("xlm-roberta", {"type": "input_prompt", "prompt_length": 3, "position": "start"}),
    ("gpt2", {"type": "input_prompt", "prompt_length": 3}),
    ("gpt2", {"type": "input_prompt", "prompt_length": 3, "position": "start"}),
    ("xlm-roberta", {"type": "deep_prompt", "prompt_length": 3}),
])
def test_spans_do_not_shift_under_prompts(tiny_model_dir, family, method):
    from xlprompt.runs.config import TrainConfig
    from xlprompt.models.classifier import build_classifier
    from xlprompt.models.heads import gather_tokens
    from xlprompt.tasks import Task

    task = Task(name="qa-tiny", label_names=("start", "end"), load=None, languages=None,
                format=ExtractiveQA(max_length=24, stride=6))
    config = TrainConfig(task="xquad", model=str(tiny_model_dir(family)), method=method)
    model = build_classifier(config, task)
    frame = qa_frame([("w1 w2 w3 alpha beta w4", "yes w9", "alpha beta"),
                      ("w5 alpha beta w6 w7 w8 w9 w10 w11 w12 w13 w14 w15", "no", "alpha beta")])
    enc = task.encode(model.backbone.tokenizer, frame, 8)
    batch = model.collator()(enc, list(range(len(enc))))
    seen = {}
    model.head.register_forward_hook(lambda mod, args, out: seen.update(hidden=args[0]))
    with torch.no_grad():
        out = model(batch)
    mask = batch.token_mask
    placed = batch.input_ids.gather(1, batch.token_positions)
    for r, ids in enumerate(enc.token_ids):
        assert placed[r, :len(ids)].tolist() == ids                   # token j sits where positions say
        assert not batch.prompt_mask.gather(1, batch.token_positions)[r, :len(ids)].any()
        start, end = enc.labels[r]
        assert (ids[start], ids[end]) == tuple(model.backbone.tokenizer.convert_tokens_to_ids(["alpha", "beta"]))
    expected = model.head.linear(gather_tokens(seen["hidden"], batch.token_positions)).transpose(1, 2)
    torch.testing.assert_close(out[mask.unsqueeze(1).expand_as(out)], expected[mask.unsqueeze(1).expand_as(out)])


@needs_data
def test_xquad_article_split_and_hub_fallback(monkeypatch):
    from xlprompt.data import squad

    en = {s: squad.load_xquad(s, "en", SHARED_DATA) for s in ("train", "dev", "test", "all")}
    assert [len(en[s]) for s in ("train", "dev", "test", "all")] == [493, 95, 602, 1190]
    titles = [set(en[s]["title"]) for s in ("train", "dev", "test")]
    assert [len(t) for t in titles] == [20, 4, 24] and not (titles[0] & titles[2]) and not (titles[1] & titles[2])
    zh = squad.load_xquad("test", "zh", SHARED_DATA)
    assert zh["id"].tolist() == en["test"]["id"].tolist()            # parallel: the same held-out questions
    assert squad.mlqa_languages(SHARED_DATA) == ["de", "en", "es", "hi", "vi", "zh"]
    with pytest.raises(XlpromptError, match="dev sets only"):
        squad.load_mlqa("test", "de", SHARED_DATA)
    with pytest.raises(XlpromptError, match="Unknown XQuAD language 'eng'"):
        squad.load_xquad("test", "eng", SHARED_DATA)
    monkeypatch.setattr(squad, "default_data_dir", lambda: None)      # no data folder at all: the hub
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # ... without `datasets` installed
    with pytest.raises(XlpromptError, match="pip install datasets"):
        squad.load_xquad("train", "en")


@pytest.fixture(scope="module")
def qa_data(tmp_path_factory):
    """The shared XQuAD/MLQA folder when present; else (a clean clone) small files in their real format:
    SQuAD-v1.1 JSON, XQuAD's 48 parallel article titles (its train/dev/test split hashes them), MLQA's
    dev-context-L-question-L.json names."""
    if (SHARED_DATA / "xquad").is_dir():
        return SHARED_DATA
    root = tmp_path_factory.mktemp("qa-data")
    (root / "xquad").mkdir()
    (root / "mlqa" / "dev").mkdir(parents=True)

    def article(title: str, k: int) -> dict:
        context = f"The river number {k} flows through the old town of Vel{k}. Its water is cold and clear."
        qas = []
        for j, (question, answer) in enumerate([(f"Where does river {k} flow?", f"the old town of Vel{k}"),
                                                (f"How is the water of river {k}?", "cold and clear")]):
            qas.append({"id": f"q{k}-{j}", "question": question,
                        "answers": [{"text": answer, "answer_start": context.index(answer)}]})
        return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}

    for language in ("en", "zh", "th", "ar"):
        data = {"data": [article(f"Article {k}", k) for k in range(48)], "version": "1.1"}
        (root / "xquad" / f"xquad.{language}.json").write_text(json.dumps(data), encoding="utf-8")
    for language in ("en", "de"):
        data = {"data": [article(f"MLQA {k}", 100 + k) for k in range(6)], "version": "1.0"}
        (root / "mlqa" / "dev" / f"dev-context-{language}-question-{language}.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def tiny_e5_dir(tmp_path_factory, e5_tokenizer):
    """A 2-layer random BERT with the offline default's tokenizer: real offsets, 512 positions for 384 windows."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(e5_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=1)
    path = tmp_path_factory.mktemp("tiny-e5")
    tf.BertModel(cfg).save_pretrained(path)
    e5_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("task,method,langs,split,sizes", [
    # XQuAD's 4 dev articles (95 questions a language) keep this quick; the split sizes are checked above
    ("xquad", {"type": "finetune"}, "en,zh,th", "dev", {"en": 95, "zh": 95, "th": 95}),
    ("xquad", {"type": "deep_prompt", "prompt_length": 4}, "ar", "dev", {"ar": 95}),
    ("mlqa", {"type": "input_prompt", "prompt_length": 4}, "de", None, {"de": 512}),
])
def test_tasks_end_to_end(tiny_e5_dir, qa_data, tmp_path, task, method, langs, split, sizes):
    import xlprompt
    from xlprompt.data import squad
    from xlprompt.evaluation.evaluate import evaluate  # not xlprompt.evaluate: importing the submodule shadows that function

    if qa_data != SHARED_DATA:  # synthetic files: their own sizes, counted by the readers
        load = squad.load_xquad if task == "xquad" else squad.load_mlqa
        sizes = {code: len(load(split or "dev", code, qa_data)) for code in sizes}
    config = xlprompt.TrainConfig(task=task, model=str(tiny_e5_dir), method=method, shots=8, epochs=1,
                                  data_dir=str(qa_data), lr=1e-2)
    run = xlprompt.fit(config, progress=False)
    assert run.info["train_examples"] >= 8 and np.isfinite(run.curve[0]["dev_loss"])
    assert {"dev_exact_match", "dev_f1"} <= set(run.curve[0])
    results = json.loads(json.dumps(evaluate(run, langs, split=split, progress=False)))
    assert results["task"] == task and list(results["languages"]) == langs.split(",")
    for code, m in results["languages"].items():
        assert set(m) == {"exact_match", "f1", "n"} and m["n"] == sizes[code]
        assert 0.0 <= m["exact_match"] <= m["f1"] <= 1.0
    assert set(results["mean"]) == {"exact_match", "f1", "languages"}
    if task == "mlqa":
        return
    if method["type"] == "deep_prompt":
        # MLQA has no training set: an XQuAD run is scored on it as it is (`xlprompt evaluate --task mlqa`)
        on_mlqa = evaluate(run, "de", task="mlqa", progress=False)
        mlqa_de = 512 if qa_data == SHARED_DATA else len(squad.load_mlqa("dev", "de", qa_data))
        assert on_mlqa["task"] == "mlqa" and on_mlqa["split"] == "dev" and on_mlqa["languages"]["de"]["n"] == mlqa_de
        with pytest.raises(XlpromptError, match="cannot be scored on 'xnli'"):
            evaluate(run, "de", task="xnli", progress=False)
    # the trained head (and prompt or model) survive a save/load round trip
    loaded = xlprompt.load(xlprompt.save(run, tmp_path / "run"))
    first = langs.split(",")[0]
    again = evaluate(loaded, first, split=split, progress=False)["languages"][first]
    assert again == results["languages"][first]
    if method["type"] == "deep_prompt":
        from typer.testing import CliRunner
        from xlprompt.cli import app

        # the CLI's table sorts by the task's own metric (it used to assume accuracy and crash after evaluating)
        out = tmp_path / "ar.json"
        done = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--langs", "ar", "--split", "dev",
                                        "--data-dir", str(qa_data), "--out", str(out)])
        assert done.exit_code == 0, done.output
        assert "exact_match" in done.output and json.loads(out.read_text())["languages"]["ar"]["n"] == sizes["ar"]
        refused = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--sort", "accuracy"])
        assert refused.exit_code == 2 and "metrics are exact_match, f1" in refused.output
