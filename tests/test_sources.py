"""Beyond English-only: several source languages, a few target examples, per-language adaptation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from xlprompt import TrainConfig, adapt, evaluate, fit, load
from xlprompt.cli import app
from xlprompt.core.errors import XlpromptError
from xlprompt.data.sampling import few_shot_splits, multilingual_splits
from xlprompt.prompts.config import InputPromptConfig


def fake_split(language: str, split: str, per_class: int = 6) -> pd.DataFrame:
    rows = [{"index_id": i, "text": f"{language} {split} {i}", "label": i % 3} for i in range(3 * per_class)]
    return pd.DataFrame(rows)


def test_draws_per_language_and_class_reproducible_and_never_from_test():
    asked = []

    def load(split, language):
        asked.append(split)
        return fake_split(language, split)

    train, dev = multilingual_splits(load, ["eng", "fra"], 2, seed=3, targets=["deu", "swh"], target_shots=1)
    counts = train.groupby(["language", "label"]).size().to_dict()
    assert counts == {**{("eng", c): 2 for c in range(3)}, **{("fra", c): 2 for c in range(3)},
                      **{("deu", c): 1 for c in range(3)}, **{("swh", c): 1 for c in range(3)}}
    assert dev.groupby(["language", "label"]).size().to_dict() == {(lang, c): 1 for lang in ("eng", "fra")
                                                                    for c in range(3)}
    assert "test" not in asked
    again, _ = multilingual_splits(load, ["eng", "fra"], 2, seed=3, targets=["deu", "swh"], target_shots=1)
    pd.testing.assert_frame_equal(train, again)
    # the first source draws what a one-language run draws; other languages get other rows of a parallel set
    alone, _ = few_shot_splits(fake_split("eng", "train"), fake_split("eng", "dev"), 2, 3)
    assert list(train[train["language"] == "eng"]["index_id"]) == list(alone["index_id"])
    assert set(train[train["language"] == "fra"]["index_id"]) != set(alone["index_id"])
    one, _ = multilingual_splits(load, ["eng"], 2, seed=3)
    pd.testing.assert_frame_equal(one, alone)  # one source: exactly today's frame
    with pytest.raises(XlpromptError, match="at most 6"):
        multilingual_splits(load, ["eng"], 2, seed=3, targets=["deu"], target_shots=7)


def test_config_reads_several_languages_and_refuses_contradictions():
    assert TrainConfig(train_language="eng_Latn,fra_Latn").train_language == ["eng_Latn", "fra_Latn"]
    assert TrainConfig(train_language=["eng_Latn"]).train_language == "eng_Latn"
    with pytest.raises(XlpromptError, match="both --target-shots"):
        TrainConfig(target_shots=2)
    with pytest.raises(XlpromptError, match="both a training language and a target"):
        TrainConfig(train_language="eng_Latn", target_shots=2, target_languages=["eng_Latn", "deu_Latn"])
    with pytest.raises(XlpromptError, match="without repeats"):
        TrainConfig(train_language="eng_Latn,eng_Latn")


@pytest.fixture(scope="module")
def multi_run(tiny_model_dir):
    config = TrainConfig(task="sib200", model=str(tiny_model_dir("bert")), method=InputPromptConfig(prompt_length=2),
                         train_language="eng_Latn,fra_Latn", shots=2, epochs=1, batch_size=8,
                         target_shots=1, target_languages="deu_Latn")
    return fit(config, progress=False)


def test_a_run_learns_from_its_sources_and_targets_and_zero_shot_excludes_them(multi_run):
    assert multi_run.info["train_languages"] == {"eng_Latn": 14, "fra_Latn": 14, "deu_Latn": 7}
    results = evaluate(multi_run, ["eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn"], progress=False, threads=1)
    assert results["train_language"] == "eng_Latn,fra_Latn"
    assert results["train_languages"] == ["eng_Latn", "fra_Latn", "deu_Latn"]
    assert results["zero_shot_mean"]["accuracy"] == pytest.approx(results["languages"]["swh_Latn"]["accuracy"])

    from xlprompt.analysis.tables import transfer_rows

    frame = pd.DataFrame({"language": ["eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn"],
                          "train_language": "eng_Latn,fra_Latn", "target_languages": "deu_Latn"})
    assert list(transfer_rows(frame)["language"]) == ["swh_Latn"]


def test_adapt_changes_only_prompt_and_head_and_the_result_loads(multi_run, tmp_path):
    multi_run.save(tmp_path / "source")
    source = load(tmp_path / "source")
    adapted = adapt(tmp_path / "source", "swh_Latn", 2, epochs=2, progress=False)
    assert adapted.config.start == str((tmp_path / "source").resolve()) and adapted.config.train_language == "swh_Latn"
    before = {k: v.clone() for k, v in source.model.backbone.model.state_dict().items()}
    after = adapted.model.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is the same frozen model
    assert not torch.equal(source.model.method.embedding, adapted.model.method.embedding)
    assert not torch.equal(source.model.head.linear.weight, adapted.model.head.linear.weight)
    adapted.save(tmp_path / "swh")
    again = load(tmp_path / "swh")
    texts = ["Habari za asubuhi", "The match ended in a draw"]
    np.testing.assert_array_equal(again.predict(texts), adapted.predict(texts))


def test_adapt_refuses_bad_input_and_writes_nothing(multi_run, tmp_path):
    multi_run.save(tmp_path / "source")
    runner = CliRunner()
    for args, message in ((["--language", "xyz_Latn", "--shots", "2"], "has no language"),
                          (["--language", "swh_Latn", "--shots", "500"], "at most"),
                          (["--language", "swh_Latn", "--shots", "0"], "shots >= 1")):
        out = runner.invoke(app, ["adapt", str(tmp_path / "source"), *args, "--out", str(tmp_path / "bad")])
        assert out.exit_code == 2 and message in out.output, out.output
        assert not (tmp_path / "bad").exists()
    with pytest.raises(XlpromptError, match="no train split"):
        fit(TrainConfig(task="xnli", model=multi_run.config.model, train_language="en,de", shots=2, epochs=1),
            progress=False)
