"""Reparameterization (mlp, residual), materialisation, and the init strategies of input soft prompts."""
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from xlprompt import TrainConfig, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.core.errors import XlpromptError
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.core.io import load_tensors, save_tensors, write_json
from xlprompt.prompts.config import InputPromptConfig
from xlprompt.prompts.input_prompt import InputPrompt, build_input_prompt
from xlprompt.prompts.reparam import MLPReparam, ResidualReparam, build_reparam
from xlprompt.runs.run import Run


@pytest.fixture(scope="module")
def backbones(tiny_model_dir):
    from xlprompt.models.backbone import Backbone

    made = {}

    def get(family):
        if family not in made:
            made[family] = Backbone.load(str(tiny_model_dir(family)))
        return made[family]

    return get


def make_config(model_dir, epochs=6, **method):
    return TrainConfig(task="toy", model=str(model_dir), method=InputPromptConfig(**{"prompt_length": 3, **method}),
                       epochs=epochs, batch_size=8, lr=0.1, seed=0)


def build(config, backbone, toy_task):
    from xlprompt.models.classifier import build_classifier

    return build_classifier(config, toy_task, backbone=backbone)


def logits_and_loss(model, toy_task, split="train", language="eng_Latn"):
    frame = toy_task.load(split, language)
    enc = encode_texts(model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(), 128)
    logits = predict_encoded(model, enc)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(enc.labels)).item()
    return logits, loss


# --- reparameterization nets ---------------------------------------------------------------------------

def test_mlp_structure_and_residual_form():
    mlp = build_reparam("mlp", 32, 16)
    layers = list(mlp.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear, nn.LayerNorm]
    assert layers[0].weight.shape == (16, 32) and layers[2].weight.shape == (32, 16)
    assert layers[3].normalized_shape == (32,)
    assert build_reparam("mlp", 32, None).net[0].out_features == 32  # h defaults to d
    res = build_reparam("residual", 32, 16)
    assert isinstance(res, ResidualReparam) and isinstance(res.mlp, MLPReparam)
    x = torch.randn(5, 32)
    assert torch.equal(res(x), x + res.mlp(x))
    assert build_reparam("none", 32, 16) is None
    with pytest.raises(XlpromptError, match="none, mlp, residual"):
        build_reparam("lstm", 32, 16)
    # seeded from the prompt's generator: deterministic, and the global RNG is left alone
    state = torch.random.get_rng_state()
    a, b = (build_reparam("mlp", 8, 4, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("reparam", ["mlp", "residual"])
@pytest.mark.parametrize("family", ["xglm", "xlm-roberta"])
def test_reparam_trains_then_materialises_into_a_net_free_run(family, reparam, backbones, tiny_model_dir,
                                                               toy_task, tmp_path):
    config = make_config(tiny_model_dir(family), reparam=reparam)
    model = build(config, backbones(family), toy_task)
    net = model.method.reparam
    net_before = {k: v.clone() for k, v in net.state_dict().items()}
    _, initial = logits_and_loss(model, toy_task)
    run = fit(config, model=model, progress=False)
    logits, final = logits_and_loss(run.model, toy_task)
    assert final < initial - 0.05
    assert any(not torch.equal(net_before[k], v) for k, v in net.state_dict().items()), "net never trained"
    # the returned run is already materialised: only the final prompt is left
    assert run.model.method.reparam is None and run.model.method.materialized
    assert list(run.model.method.state_dict()) == ["embedding"]
    assert run.info["trained_parameters"] > sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    run.save(tmp_path / "run")
    assert set(load_tensors(tmp_path / "run" / "prompt.safetensors")) == {"embedding"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"]["reparam"] == reparam
    again = load(tmp_path / "run", backbone=backbones(family))
    assert again.model.method.reparam is None
    assert np.array_equal(logits, logits_and_loss(again.model, toy_task)[0])


@pytest.mark.parametrize("reparam", ["mlp", "residual"])
def test_materialize_keeps_logits_exactly(reparam, backbones, tiny_model_dir, toy_task):
    config = make_config(tiny_model_dir("xglm"), reparam=reparam, reparam_hidden=8)
    model = build(config, backbones("xglm"), toy_task)
    with torch.no_grad():  # move the net off its init so the LayerNorm affine is exercised too
        for p in model.method.reparam.parameters():
            p.add_(0.1 * torch.randn_like(p))
    full_state = {k: v.clone() for k, v in model.method.state_dict().items()}
    before, _ = logits_and_loss(model, toy_task, "test", "deu_Latn")
    model.method.materialize()
    assert list(model.method.state_dict()) == ["embedding"]
    assert np.array_equal(before, logits_and_loss(model, toy_task, "test", "deu_Latn")[0])
    model.method.materialize()  # idempotent
    # a module built with the net accepts the materialised state directly (the net is dropped) ...
    fresh = build(config, backbones("xglm"), toy_task)
    fresh.head.load_state_dict(model.head.state_dict())
    fresh.method.load_state_dict(model.method.state_dict())
    assert fresh.method.reparam is None
    assert np.array_equal(before, logits_and_loss(fresh, toy_task, "test", "deu_Latn")[0])
    # ... and still loads a full state (embedding + net) as before
    other = build(config, backbones("xglm"), toy_task)
    other.method.load_state_dict(full_state)
    assert other.method.reparam is not None


# --- initialisation --------------------------------------------------------------------------------------

def prompt_for(backbone, seed=0, **cfg):
    return build_input_prompt(InputPromptConfig(**{"prompt_length": 4, **cfg}), backbone,
                              torch.Generator().manual_seed(seed)).embedding.detach()


def test_random_init_in_range_and_deterministic(backbones):
    bb = backbones("bert")
    a = prompt_for(bb, 0, init_range=0.1)
    assert a.shape == (4, 32) and a.abs().max() <= 0.1 and a.std() > 0.01
    assert torch.equal(a, prompt_for(bb, 0, init_range=0.1))
    assert not torch.equal(a, prompt_for(bb, 1, init_range=0.1))
    # the raw prompt does not depend on whether a reparam net follows it
    assert torch.equal(a, prompt_for(bb, 0, init_range=0.1, reparam="mlp"))


def test_vocab_init_rows_are_token_embeddings(backbones):
    bb = backbones("xglm")  # XGLM scales its embeddings by sqrt(d): rows must carry that scale
    with torch.no_grad():
        table = bb.embed(torch.arange(len(bb.tokenizer)))
    assert not torch.allclose(table, bb.input_embeddings.weight[:len(bb.tokenizer)])
    p = prompt_for(bb, 0, init="vocab", prompt_length=6)
    special = set(bb.tokenizer.all_special_ids)
    for row in p:
        hits = [i for i in range(len(table)) if torch.equal(row, table[i])]
        assert hits and not set(hits) & special
    assert torch.equal(p, prompt_for(bb, 0, init="vocab", prompt_length=6))


def test_text_init_repeats_the_phrase(backbones):
    bb = backbones("xglm")
    ids = bb.tokenizer("alpha beta w3", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        rows = bb.embed(torch.tensor(ids))
    assert torch.equal(prompt_for(bb, init="text:alpha beta w3", prompt_length=5), rows[[0, 1, 2, 0, 1]])
    assert torch.equal(prompt_for(bb, init="text:alpha beta w3", prompt_length=2), rows[:2])
    for phrase in ("", "   "):
        with pytest.raises(XlpromptError, match="gives no tokens.*write a phrase"):
            prompt_for(bb, init=f"text:{phrase}")


def save_untrained_run(config, backbone, toy_task, out):
    return Run(config=config, model=build(config, backbone, toy_task)).save(out)


def test_run_init_copies_a_saved_prompt(backbones, tiny_model_dir, toy_task, tmp_path):
    bb = backbones("xglm")
    source = save_untrained_run(make_config(tiny_model_dir("xglm")), bb, toy_task, tmp_path / "a")
    saved = load_tensors(source / "prompt.safetensors")["embedding"]
    assert torch.equal(prompt_for(bb, init=f"run:{source}", prompt_length=3), saved)
    with pytest.warns(UserWarning, match="3 vectors.*repeated.*--prompt-length 3"):
        assert torch.equal(prompt_for(bb, init=f"run:{source}", prompt_length=5), saved[[0, 1, 2, 0, 1]])
    with pytest.warns(UserWarning, match="cut"):
        assert torch.equal(prompt_for(bb, init=f"run:{source}", prompt_length=2), saved[:2])
    # a run seeded from another run still loads once the source is gone
    child = save_untrained_run(make_config(tiny_model_dir("xglm"), init=f"run:{source}"), bb, toy_task,
                               tmp_path / "b")
    shutil.rmtree(source)
    assert torch.equal(load(child, backbone=bb).model.method.embedding, saved)


def test_run_init_errors_say_what_to_do(backbones, tmp_path):
    bb = backbones("xglm")
    with pytest.raises(XlpromptError, match="does not exist; pass the folder of a run"):
        prompt_for(bb, init=f"run:{tmp_path / 'missing'}")
    (tmp_path / "half").mkdir()
    with pytest.raises(XlpromptError, match="not a complete xlprompt run"):
        prompt_for(bb, init=f"run:{tmp_path / 'half'}")
    fake = tmp_path / "small"
    fake.mkdir()
    write_json(fake / "run.json", {"format": "xlprompt-run/1"})
    with pytest.raises(XlpromptError, match="has no prompt.safetensors.*--method prompt"):
        prompt_for(bb, init=f"run:{fake}")
    save_tensors(fake / "prompt.safetensors", {"embedding": torch.zeros(4, 16)})
    with pytest.raises(XlpromptError, match="hidden size 16 but this model has 32.*same hidden size"):
        prompt_for(bb, init=f"run:{fake}")
    save_tensors(fake / "prompt.safetensors", {"embedding": torch.zeros(4, 32), "reparam.net.0.weight":
                                               torch.zeros(32, 32)})
    with pytest.raises(XlpromptError, match="not one materialised input prompt"):
        prompt_for(bb, init=f"run:{fake}")
