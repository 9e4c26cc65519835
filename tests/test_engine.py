"""The ONNX Runtime engine: same logits as PyTorch for input prompts, deep prompts and mixed-prompt batches;
its export cache; the accuracy guard; the fallback to PyTorch when ONNX Runtime is missing."""
import json
import random

import numpy as np
import pytest
import torch

from xlprompt import load
from xlprompt.data.collate import encode_texts
from xlprompt.engine import engine_context, onnx_backbone, resolve_engine
from xlprompt.engine import export as engine_export
from xlprompt.engine.guard import accuracy_guard
from xlprompt.core.errors import XlpromptError
from xlprompt.evaluation.evaluate import evaluate, predict_encoded
from xlprompt.models.backbone import Backbone
from xlprompt.serving import PromptBank

from serving_runs import RUNS, TEXTS, runs_per_family

import onnx  # noqa: F401  (the test extra installs both: a broken install must fail, not skip)
import onnxruntime

ENCODERS = ["bert", "xlm-roberta"]
TOL = 1e-4  # fp32 ONNX Runtime vs PyTorch: same math, other kernels and summation order


@pytest.fixture(scope="module")
def runs(tiny_model_dir, toy_task, tmp_path_factory):
    return runs_per_family(tiny_model_dir, tmp_path_factory, "engine-runs")


def logits(run, texts, engine_root=None, precision=None):
    enc = encode_texts(run.model.backbone.tokenizer, texts, [0] * len(texts), run.config.max_length)
    if precision is None:
        return predict_encoded(run.model, enc, batch_size=5)
    with onnx_backbone(run.model, precision, root=engine_root):
        return predict_encoded(run.model, enc, batch_size=5)


@pytest.mark.parametrize("family", ENCODERS)
@pytest.mark.parametrize("name", ["p1", "p3", "p5", "d2", "d4", "h0"])
def test_onnx_matches_torch_per_run(family, name, runs, tmp_path):
    """Input prompts (both slot layouts, reparam folded), deep prompts and no prompt, in batches of mixed lengths."""
    run = load(runs(family)[name])
    texts = TEXTS * 2
    expected = logits(run, texts)
    got = logits(run, texts, tmp_path, "fp32")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL)
    assert "forward" not in vars(run.model.backbone)  # PyTorch's forward is back after the block
    np.testing.assert_array_equal(logits(run, texts), expected)


@pytest.mark.parametrize("family", ENCODERS)
def test_onnx_mixed_prompt_batches_match_torch(family, tiny_model_dir, runs):
    """Serving's one-pass batches of input prompts, deep prompts of two lengths and a head-only run."""
    rows = [(list(RUNS)[i % len(RUNS)], TEXTS[(i * 7) % len(TEXTS)]) for i in range(36)]
    random.Random(1).shuffle(rows)
    out = {}
    for engine in ("torch", "onnx"):
        bank = PromptBank(Backbone.load(str(tiny_model_dir(family))), max_padding=1.0, engine=engine,
                         precision="fp32")
        assert bank.engine == engine
        for name, path in runs(family).items():
            bank.add(name, path)
        out[engine] = bank.classify([n for n, _ in rows], [t for _, t in rows])
        assert bank.forward_passes == 1
    for a, b in zip(out["torch"], out["onnx"]):
        np.testing.assert_allclose(a.logits, b.logits, atol=TOL, rtol=TOL)
        assert a.label == b.label


def test_evaluate_names_the_engine(runs, toy_task):
    run = load(runs("bert")["p3"])
    torch_results = evaluate(run, "all", progress=False, engine="torch")
    onnx_results = evaluate(run, "all", progress=False, engine="onnx")
    assert torch_results["speed"]["engine"]["used"] == "torch"
    engine = onnx_results["speed"]["engine"]
    assert engine["used"] == "onnx" and engine["requested"] == "onnx" and engine["cache"] in ("hit", "built")
    for code, metrics in torch_results["languages"].items():
        assert onnx_results["languages"][code]["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
    preds_torch = run.predict(TEXTS, engine="torch")
    np.testing.assert_array_equal(run.predict(TEXTS, engine="onnx"), preds_torch)


def test_int8_graph_runs_and_stays_close(runs, tmp_path):
    """int8 (dynamic, per-channel) is an approximation: close to fp32 on the tiny model, never identical."""
    run = load(runs("bert")["p5"])
    expected = logits(run, TEXTS)
    got = logits(run, TEXTS, tmp_path, "int8")
    assert got.shape == expected.shape and np.isfinite(got).all()
    # measured on the tiny model: at most 1.1 % of the largest logit (Zen 4, VNNI); a broken quantization
    # (wrong scale, a layer left out of the graph) moves logits by far more than 5 %
    deviation = np.abs(got - expected).max() / np.abs(expected).max()
    assert 1e-6 < deviation < 0.05, deviation
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
    assert (tmp_path / engine_export.cache_key(run.model.backbone) / "plain.int8.json").exists()


# ----------------------------------------------------------------------------- the export cache

def graph_calls(monkeypatch):
    calls = []
    real = engine_export.export_graph

    def counting(backbone, kind, path):
        calls.append(kind)
        real(backbone, kind, path)

    monkeypatch.setattr(engine_export, "export_graph", counting)
    return calls


def test_export_is_cached_and_reused(tiny_model_dir, tmp_path, monkeypatch):
    calls = graph_calls(monkeypatch)
    backbone = Backbone.load(str(tiny_model_dir("bert")))
    path, info = engine_export.exported_graph(backbone, "plain", tmp_path)
    assert info["cache"] == "built" and calls == ["plain"]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["bytes"] == path.stat().st_size and record["versions"]["torch"] == torch.__version__
    again = Backbone.load(str(tiny_model_dir("bert")))  # another process would load the same weights
    path2, info2 = engine_export.exported_graph(again, "plain", tmp_path)
    assert path2 == path and info2["cache"] == "hit" and calls == ["plain"]


def test_export_is_rebuilt_when_weights_or_versions_change(tiny_model_dir, tmp_path, monkeypatch):
    calls = graph_calls(monkeypatch)
    backbone = Backbone.load(str(tiny_model_dir("bert")))
    first, _ = engine_export.exported_graph(backbone, "plain", tmp_path)
    changed = Backbone.load(str(tiny_model_dir("bert")))
    with torch.no_grad():
        changed.body.encoder.layer[0].attention.self.query.weight[0, 0] += 1.0
    second, info = engine_export.exported_graph(changed, "plain", tmp_path)
    assert info["cache"] == "built" and second.parent != first.parent
    versions = engine_export.library_versions()
    monkeypatch.setattr(engine_export, "library_versions", lambda: {**versions, "onnxruntime": "0.0.1"})
    third, info = engine_export.exported_graph(Backbone.load(str(tiny_model_dir("bert"))), "plain", tmp_path)
    assert info["cache"] == "built" and third.parent not in (first.parent, second.parent)
    assert calls == ["plain", "plain", "plain"]
    # the input embedding matrix is not in the graph: changing it keeps the export
    same = Backbone.load(str(tiny_model_dir("bert")))
    with torch.no_grad():
        same.input_embeddings.weight[5] += 1.0
    monkeypatch.setattr(engine_export, "library_versions", lambda: versions)
    assert engine_export.exported_graph(same, "plain", tmp_path)[0] == first


@pytest.mark.parametrize("damage", ["no record", "truncated", "garbage with an old record"])
def test_half_written_export_is_never_used(damage, tiny_model_dir, tmp_path, monkeypatch):
    backbone = Backbone.load(str(tiny_model_dir("bert")))
    path, _ = engine_export.exported_graph(backbone, "plain", tmp_path)
    whole = path.read_bytes()
    if damage == "no record":  # a crash between the graph's rename and its record
        path.with_suffix(".json").unlink()
    elif damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    else:
        path.write_bytes(b"\0" * len(whole))  # same size, other content
    assert engine_export.complete(path.parent, "plain") is None
    calls = graph_calls(monkeypatch)
    path2, info = engine_export.exported_graph(backbone, "plain", tmp_path)
    assert info["cache"] == "built" and calls == ["plain"] and path2.read_bytes() == whole
    run_bytes = onnxruntime.InferenceSession(str(path2)).get_inputs()[0].name
    assert run_bytes == "inputs_embeds"


# ------------------------------------------------------------------------------ guard, fallback

def test_accuracy_guard_decision():
    ref = {f"l{i}": 0.70 for i in range(10)}
    close = {**ref, "l0": 0.685, "l1": 0.71}            # worst -1.5, mean -0.05
    assert accuracy_guard(ref, close).passed
    one_bad = {**ref, "l3": 0.675}                       # worst -2.5: fails although the mean is -0.25
    result = accuracy_guard(ref, one_bad)
    assert not result.passed and result.worst_language == "l3" and result.worst_delta == pytest.approx(-2.5)
    assert result.mean_delta == pytest.approx(-0.25)
    everywhere = {k: v - 0.006 for k, v in ref.items()}  # mean -0.6, every language within 2
    assert not accuracy_guard(ref, everywhere).passed
    assert "FAIL" in accuracy_guard(ref, everywhere).line("int8") and "PASS" in accuracy_guard(ref, close).line()
    with pytest.raises(XlpromptError):
        accuracy_guard(ref, {"l0": 0.7})


def test_missing_onnxruntime_falls_back_to_torch_with_one_line(runs, toy_task, monkeypatch, capsys):
    import xlprompt.engine as engine

    monkeypatch.setattr(engine, "onnx_available", lambda: False)
    monkeypatch.setattr(engine.base, "_said", set())
    run = load(runs("bert")["p1"])
    results = evaluate(run, "all", progress=False, engine="onnx")
    evaluate(run, "all", progress=False, engine="onnx")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "onnxruntime" in line]
    assert len(lines) == 1 and "pip install 'xlprompt[onnx]'" in lines[0] and "torch" in lines[0]
    assert results["speed"]["engine"]["used"] == "torch" and "onnxruntime" in results["speed"]["engine"]["why"]
    bank = PromptBank(run.model.backbone, engine="onnx")
    assert bank.engine == "torch"


def test_engine_settings_that_cannot_run_are_errors(runs):
    run = load(runs("bert")["p1"])
    backbone = run.model.backbone
    with pytest.raises(XlpromptError, match="Unknown engine"):
        resolve_engine("tvm", backbone, torch.device("cpu"), "fp32")
    with pytest.raises(XlpromptError, match="fp32 or int8"):
        resolve_engine("onnx", backbone, torch.device("cpu"), "bf16")
    with pytest.raises(XlpromptError, match="frozen"):
        resolve_engine("onnx", backbone, torch.device("cpu"), "fp32", trained_backbone=True)
    assert resolve_engine("torch", backbone, torch.device("cpu"), "fp32")[0] == "torch"


def test_decoders_stay_on_torch(tiny_model_dir, capsys, monkeypatch):
    import xlprompt.engine as engine

    monkeypatch.setattr(engine.base, "_said", set())
    backbone = Backbone.load(str(tiny_model_dir("gpt2")))
    used, why = resolve_engine("onnx", backbone, torch.device("cpu"), "fp32")
    assert used == "torch" and "encoder" in why and "encoder" in capsys.readouterr().err


def test_engine_context_restores_the_torch_forward(tiny_model_dir):
    backbone = Backbone.load(str(tiny_model_dir("bert")))

    class Fake:
        def forward(self, *args, **kwargs):
            return "onnx"

    with engine_context(backbone, Fake()):
        assert backbone(torch.zeros(1, 2, backbone.hidden_size), torch.ones(1, 2, dtype=torch.long)) == "onnx"
    out = backbone(torch.zeros(1, 2, backbone.hidden_size), torch.ones(1, 2, dtype=torch.long))
    assert isinstance(out, torch.Tensor)


def test_cli_engine_flag(runs, tmp_path):
    from typer.testing import CliRunner

    from xlprompt.cli import app

    runner = CliRunner()
    run_dir = runs("bert")["d2"]
    res = runner.invoke(app, ["evaluate", str(run_dir), "--engine", "onnx", "--threads", "1",
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "engine onnx" in " ".join(res.output.split())
    speed = json.loads((tmp_path / "r.json").read_text())["speed"]
    assert speed["engine"]["used"] == "onnx" and speed["engine"]["requested"] == "onnx"
    for command in (["evaluate", str(run_dir)], ["quickstart"], ["serve", str(run_dir)]):
        res = runner.invoke(app, [*command, "--engine", "tvm"])
        assert res.exit_code == 2 and "Unknown engine" in " ".join(res.output.split()), (command, res.output)
