"""TyDiQA-GoldP: the loader on a small fixture in the official GoldP v1.1 format (tests/fixtures/tydiqa), the
hub path on the same rows in the hub's `secondary_task` layout, and the task end to end on a tiny model."""
import json
import sys
from pathlib import Path

import pytest

from xlprompt.core.errors import XlpromptError

FIXTURE = Path(__file__).parent / "fixtures" / "tydiqa"


@pytest.fixture(autouse=True)
def _fresh_cache():
    from xlprompt.data import tydiqa

    tydiqa._split_frame.cache_clear()
    yield
    tydiqa._split_frame.cache_clear()


def hub_rows(split: str) -> list[dict]:
    """The fixture's questions as the hub gives them (one flat row per question)."""
    data = json.loads((FIXTURE / f"tydiqa-goldp-v1.1-{split}.json").read_text())["data"]
    return [{"id": qa["id"], "title": a["title"], "context": p["context"], "question": qa["question"],
             "answers": {"text": [x["text"] for x in qa["answers"]],
                         "answer_start": [x["answer_start"] for x in qa["answers"]]}}
            for a in data for p in a["paragraphs"] for qa in p["qas"]]


def test_goldp_files_splits_and_languages():
    from xlprompt.data.tydiqa import load_tydiqa, tydiqa_languages

    assert tydiqa_languages() == ["ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te"]
    train, selection = load_tydiqa("train", "en", FIXTURE), load_tydiqa("selection", "en", FIXTURE)
    assert (len(train), len(selection)) == (11, 1)
    assert set(selection["title"]) == {"Zanzibar"} and "Zanzibar" not in set(train["title"])
    assert [len(load_tydiqa("dev", code, FIXTURE)) for code in ("en", "fi", "sw")] == [2, 2, 1]
    fi = load_tydiqa("dev", "fi", FIXTURE)
    assert set(fi["language"]) == {"fi"} and fi["id"].str.startswith("finnish-").all()
    row = train.iloc[0]
    assert row["context"][row["answer_starts"][0]:].startswith(row["answers"][0])
    with pytest.raises(XlpromptError, match="Unknown TyDiQA-GoldP language 'ja'"):
        load_tydiqa("dev", "ja", FIXTURE)
    with pytest.raises(XlpromptError, match="has no ar questions"):
        load_tydiqa("dev", "ar", FIXTURE)
    with pytest.raises(XlpromptError, match="Unknown TyDiQA split 'test'"):
        load_tydiqa("test", "en", FIXTURE)


def test_hub_rows_give_the_same_frames(monkeypatch, tmp_path):
    from xlprompt.data import tydiqa

    asked = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(name, config, split):
            asked.append((name, config, split))
            return hub_rows("dev" if split == "validation" else "train")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    empty = tmp_path / "data"  # a data folder without tydiqa/: the hub is read
    empty.mkdir()
    for split, language in (("train", "en"), ("selection", "en"), ("dev", "fi")):
        hub = tydiqa.load_tydiqa(split, language, empty)
        files = tydiqa.load_tydiqa(split, language, FIXTURE)
        assert hub.to_dict("records") == files.to_dict("records")
    assert asked == [("google-research-datasets/tydiqa", "secondary_task", "train"),
                     ("google-research-datasets/tydiqa", "secondary_task", "validation")]


def test_hub_without_datasets_says_what_to_install(monkeypatch, tmp_path):
    from xlprompt.data import tydiqa

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(XlpromptError, match="pip install"):
        tydiqa.load_tydiqa("dev", "en", tmp_path)


def test_tydiqa_trains_and_evaluates_end_to_end(tmp_path):
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    from xlprompt import TrainConfig, evaluate, fit
    from xlprompt.models.offline_default import offline_default_dir
    from xlprompt.prompts.config import InputPromptConfig

    tokenizer = AutoTokenizer.from_pretrained(offline_default_dir())  # real offsets for every script
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=1)
    tf.BertModel(cfg).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    config = TrainConfig(task="tydiqa", model=str(tmp_path / "model"), method=InputPromptConfig(prompt_length=2),
                         epochs=1, batch_size=4, data_dir=str(FIXTURE), max_length=64)
    run = fit(config, progress=False, device="cpu")
    assert run.info["train_examples"] >= 11 and run.info["dev_examples"] >= 1
    results = evaluate(run, "en,fi,sw", progress=False, token_cache=False, threads=1)
    assert results["task"] == "tydiqa" and results["split"] == "dev"
    assert {code: m["n"] for code, m in results["languages"].items()} == {"en": 2, "fi": 2, "sw": 1}
    # each language's numbers are its questions' own predicted spans, scored one by one
    from xlprompt.evaluation.evaluate import predict_outputs
    from xlprompt.tasks import get_task
    from xlprompt.tasks.qa import exact_match, f1_score

    task = get_task("tydiqa")
    for code, metrics in results["languages"].items():
        frame = task.load("dev", code, str(FIXTURE))
        encoded = task.encode(run.model.backbone.tokenizer, frame, run.config.max_length)
        answers = task.format.predict_answers(frame, encoded, predict_outputs(run.model, encoded, 64))
        assert all(a in context for a, context in zip(answers, frame["context"]))  # spans of the context
        per_question = [(max(exact_match(a, t, lang) for t in truths), max(f1_score(a, t, lang) for t in truths))
                        for a, truths, lang in zip(answers, frame["answers"], frame["language"])]
        assert set(metrics) >= {"exact_match", "f1", "n"}, metrics
        assert metrics["exact_match"] == pytest.approx(sum(e for e, _ in per_question) / len(per_question))
        assert metrics["f1"] == pytest.approx(sum(f for _, f in per_question) / len(per_question))
