"""`int8-checked`: every row in int8, the close calls again in fp32, with a threshold calibrated on the
training language's dev set."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xlprompt import TrainConfig, fit
from xlprompt.engine import checked, int8_token
from xlprompt.engine.int8_token import int8_matmul_available
from xlprompt.evaluation.evaluate import evaluate, predict_outputs
from xlprompt.engine.torch_engine import precision_context
from xlprompt.prompts.config import InputPromptConfig

pytestmark = pytest.mark.skipif(not int8_matmul_available(), reason="torch has no CPU int8 matmul")


def test_margins_and_threshold_on_known_numbers():
    fp32 = [np.array([2.0, 1.0, 0.0]), np.array([0.0, 0.5, 0.4]), np.array([3.0, -1.0, 0.0])]
    int8 = [np.array([2.0, 1.5, 0.0]), np.array([0.0, 0.3, 0.4]), np.array([3.0, -1.0, 0.0])]
    np.testing.assert_allclose(checked.margins(fp32), [1.0, 0.1, 3.0])
    np.testing.assert_allclose(checked.margins(int8), [0.5, 0.1, 3.0])
    calibration = checked.calibrate(fp32, int8, quantile=1.0)
    assert calibration["threshold"] == pytest.approx(0.5) and calibration["flips"] == 1
    assert checked.rows_to_recheck(int8, 0.5).tolist() == [1]  # 0.5 itself is not below the threshold
    with pytest.raises(ValueError, match="labels >= 2"):
        checked.margins([np.array([1.0])])


@pytest.fixture(scope="module")
def trained(tiny_model_dir, toy_task):
    config = TrainConfig(task="toy", model=str(tiny_model_dir("bert")), method=InputPromptConfig(prompt_length=3),
                         epochs=2, batch_size=8, lr=0.1, seed=0)
    return fit(config, progress=False)


def test_close_calls_get_exactly_the_fp32_outputs(trained, monkeypatch):
    monkeypatch.setattr(checked, "MIN_ROWS", 1)
    results = evaluate(trained, "all", progress=False, precision="int8-checked", threads=1, token_cache=False)
    check = results["speed"]["precision"]["recheck"]
    assert results["speed"]["precision"]["used"] == "int8-checked"
    assert check["split"] == "dev" and check["threshold"] > 0 and 0 < check["rechecked_rows"] < results["speed"][
        "sentences"]

    # the same passes by hand: int8 everywhere, fp32 on the rows under the threshold
    from xlprompt.data.collate import Encoded
    from xlprompt.tasks import get_task

    task, model = get_task("toy"), trained.model
    pooled = Encoded.concat([task.encode(model.backbone.tokenizer, task.load("test", c), 128)
                             for c in ("deu_Latn", "eng_Latn")])
    fp32 = predict_outputs(model, pooled, 64)
    with precision_context("int8", model, torch.device("cpu")):
        int8 = predict_outputs(model, pooled, 64)
    rows = checked.rows_to_recheck(int8, check["threshold"])
    assert len(rows) == check["rechecked_rows"]
    mixed = checked.replace_rows(int8, rows, [fp32[r] for r in rows])
    expected = {c: float(np.mean(np.stack(mixed[i * 40:(i + 1) * 40]).argmax(1) ==
                                 np.array(pooled.labels[i * 40:(i + 1) * 40])))
                for i, c in enumerate(("deu_Latn", "eng_Latn"))}
    assert {c: m["accuracy"] for c, m in results["languages"].items()} == pytest.approx(expected, abs=1e-12)


def test_small_inputs_and_other_engines_fall_back_to_fp32(trained):
    results = evaluate(trained, "all", progress=False, precision="int8-checked", threads=1, token_cache=False)
    assert results["speed"]["precision"]["used"] == "fp32"
    assert "for at least 2,000 rows" in results["speed"]["precision"]["why"]


def test_calibration_is_kept_on_disk_and_keyed_by_the_prompt(trained, monkeypatch, tmp_path):
    from xlprompt.evaluation.evaluate import predict_outputs
    from xlprompt.tasks import get_task

    monkeypatch.setenv("XLPROMPT_CALIBRATION_CACHE", str(tmp_path))
    task = get_task("toy")
    checked._CALIBRATIONS.clear()
    first = checked.calibration(trained, task, predict_outputs)
    assert len(list(tmp_path.glob("*.json"))) == 1
    checked._CALIBRATIONS.clear()  # a new process: the disk answers, no forward pass runs
    assert checked.calibration(trained, task, lambda *a, **k: pytest.fail("calibrated again")) == first
    monkeypatch.undo()
    monkeypatch.setenv("XLPROMPT_CALIBRATION_CACHE", str(tmp_path))
    # another prompt is another key; a damaged file is calibrated again and rewritten
    prompt = trained.model.method.embedding
    saved = prompt.detach().clone()
    with torch.no_grad():
        prompt.add_(0.01)
    try:
        checked._CALIBRATIONS.clear()
        checked.calibration(trained, task, predict_outputs)
        assert len(list(tmp_path.glob("*.json"))) == 2
    finally:
        with torch.no_grad():
            prompt.copy_(saved)
    for path in tmp_path.glob("*.json"):
        path.write_text("{half")
    checked._CALIBRATIONS.clear()
    assert checked.calibration(trained, task, predict_outputs) == first


def test_run_predict_uses_int8_checked_from_min_rows(trained, monkeypatch):
    from machines import use_machine
    from xlprompt.tasks import get_task

    texts = get_task("toy").load("test", "deu_Latn")["text"].tolist()
    fp32 = trained.predict(texts, precision="fp32")
    calls = []
    real = checked.CheckedEngine.outputs
    monkeypatch.setattr(checked.CheckedEngine, "outputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert trained.predict(texts) == fp32 and not calls  # 40 texts: below MIN_ROWS, fp32
    monkeypatch.setattr(checked, "MIN_ROWS", 1)
    assert trained.predict(texts) == fp32 and not calls  # auto on the faked AVX2 CPU, where int8 is slow: fp32
    use_machine(monkeypatch, "vnni")  # where it is fast and bf16 is not native: int8-checked
    checked_labels = trained.predict(texts)
    assert calls and len(checked_labels) == len(texts)
    # each label is int8's where its margin is wide, fp32's where it was rechecked: here they agree
    assert sum(a == b for a, b in zip(checked_labels, fp32)) >= len(texts) - 1
