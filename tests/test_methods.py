"""Freezing policy and baselines: prompt only, prompt + model (no MF), full fine-tuning, head only."""
import pytest
import torch

from xlprompt import TrainConfig, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.core.errors import XlpromptError
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.prompts.config import FinetuneConfig, HeadOnlyConfig, InputPromptConfig


def config(model_dir, method, **kw):
    base = dict(task="toy", model=str(model_dir), method=method, epochs=3, lr=0.1, model_lr=1e-3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(model):
    return {k: v.clone() for k, v in model.backbone.model.state_dict().items()}


def changed(before, model):
    after = model.backbone.model.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("family", ["xglm", "bert"])
@pytest.mark.parametrize("method,freeze,backbone_trains,has_prompt", [
    (InputPromptConfig(prompt_length=2), True, False, True),
    (InputPromptConfig(prompt_length=2), False, True, True),
    (FinetuneConfig(), None, True, False),
    (HeadOnlyConfig(), None, False, False),
])
def test_freezing_policy(family, method, freeze, backbone_trains, has_prompt, tiny_model_dir, toy_task, tmp_path):
    from xlprompt.models.classifier import build_classifier

    cfg = config(tiny_model_dir(family), method, freeze_model=freeze)
    model = build_classifier(cfg, toy_task)
    before = snapshot(model)
    run = fit(cfg, model=model, progress=False)
    assert bool(changed(before, run.model)) == backbone_trains
    assert (run.model.method is not None) == has_prompt
    run.save(tmp_path / "run")
    saved = {p.name for p in (tmp_path / "run").iterdir()}
    assert ("backbone.safetensors" in saved) == backbone_trains
    assert ("prompt.safetensors" in saved) == has_prompt
    again = load(tmp_path / "run")
    frame = toy_task.load("test", "deu_Latn")
    enc = encode_texts(run.model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(), 128)
    assert (predict_encoded(run.model, enc) == predict_encoded(again.model, enc)).all()


def test_finetune_cannot_be_frozen(tiny_model_dir):
    with pytest.raises(XlpromptError, match="Fine-tuning trains the model"):
        config(tiny_model_dir("bert"), FinetuneConfig(), freeze_model=True)


@pytest.mark.parametrize("family", ["xglm", "bert"])
def test_trainable_parameter_counts(family, tiny_model_dir, toy_task, tmp_path):
    import json

    run = fit(config(tiny_model_dir(family), InputPromptConfig(prompt_length=3), epochs=1), progress=False)
    run.save(tmp_path / "run")
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["parameters"]
    d = run.model.backbone.hidden_size
    head = 0 if family == "xglm" else d * 2 + 2  # verbalizer rows are the model's; encoder head is Linear(d, 2)
    assert counts["trainable"] == 3 * d + head
    assert counts["backbone"] == sum(p.numel() for p in run.model.backbone.model.parameters())
    assert counts["trainable_share_of_backbone"] == pytest.approx(counts["trainable"] / counts["backbone"])
