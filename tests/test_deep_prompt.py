"""Deep prompts (prefix keys/values in every layer) on tiny random models of every family, incl. a GQA Llama."""
import pytest
import torch

from xlprompt import TrainConfig, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.core.io import load_tensors
from xlprompt.prompts import DeepPrompt, DeepPromptConfig
from xlprompt.training.fit import param_groups

from conftest import DECODERS, FAMILIES, SPECIALS, WORDS, tiny_tokenizer

ALL = FAMILIES + ["llama"]  # llama: grouped-query attention (2 K/V heads for 4 query heads), RoPE


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from a second thread, and on a busy 2-core machine thread spin-waits
    made this file 7x slower; the setting is restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir, tmp_path_factory):
    made = {}

    def make(family):
        if family != "llama":
            return tiny_model_dir(family)
        if family not in made:
            import transformers as tf

            torch.manual_seed(0)
            cfg = tf.LlamaConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=128, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                                 initializer_range=0.2)
            path = tmp_path_factory.mktemp("tiny-llama")
            tf.LlamaForCausalLM(cfg).save_pretrained(path)
            tiny_tokenizer("decoder").save_pretrained(path)
            made[family] = path
        return made[family]

    return make


def config(path, **kw):
    method = DeepPromptConfig(prompt_length=4, prefix_projection=kw.pop("projection", False), projection_hidden=16)
    base = dict(task="toy", model=str(path), method=method, epochs=4, batch_size=8, lr=0.1, seed=0)
    return TrainConfig(**{**base, **kw})


def classifier(family, model_dir, toy_task, **kw):
    from xlprompt.models.classifier import build_classifier

    model = build_classifier(config(model_dir(family), **kw), toy_task)
    return model.eval()


def logits(model, texts):
    enc = encode_texts(model.backbone.tokenizer, texts, [0] * len(texts), 128)
    return torch.tensor(predict_encoded(model, enc))


def train_loss(model):
    """The training objective on the toy train split, in eval mode (as test_training measures it)."""
    from xlprompt.tasks import get_task

    frame = get_task("toy").load("train", "eng_Latn")
    enc = encode_texts(model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(), 128)
    model.eval()
    with torch.no_grad():
        batch = model.collator()(enc, list(range(len(enc))))
        return torch.nn.functional.cross_entropy(model(batch), batch.labels).item()


TEXTS = ["alpha w1 w2", "beta w3 w4 w5 w6 w7 w8 w9 w10", "alpha w11"]


@pytest.mark.parametrize("family", ALL)
def test_training_learns_with_frozen_backbone(family, model_dir, toy_task):
    model = classifier(family, model_dir, toy_task)
    assert isinstance(model.method, DeepPrompt) and model.num_slots == 0
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    initial = train_loss(model)
    run = fit(config(model_dir(family)), model=model, progress=False)
    after = run.model.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone changed"
    assert train_loss(run.model) < initial - 0.05
    for name, p in run.model.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("family", ["xglm", "bert", "llama"])
def test_every_layer_key_and_value_gets_gradient_backbone_none(family, projection, model_dir, toy_task):
    model = classifier(family, model_dir, toy_task, projection=projection).train()
    param_groups(model, config(model_dir(family)))  # the freezing policy fit uses
    enc = encode_texts(model.backbone.tokenizer, TEXTS, [1, 0, 1], 128)
    batch = model.collator()(enc, [0, 1, 2])
    torch.nn.functional.cross_entropy(model(batch), batch.labels).backward()
    method = model.method
    if projection:
        assert method.prefix is None
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    else:
        grad = method.prefix.grad
        assert grad.shape == method.shape
        assert (grad.flatten(2).abs().sum(-1) > 0).all(), "a layer's K or V got no gradient"
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("family", ALL)
def test_sentence_alone_equals_sentence_in_padded_batch(family, model_dir, toy_task):
    model = classifier(family, model_dir, toy_task)
    alone = logits(model, TEXTS[:1])
    batch = logits(model, TEXTS)
    assert batch.shape == (3, 2)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[2], logits(model, TEXTS[2:])[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ALL)
def test_prefix_changes_logits(family, model_dir, toy_task):
    model = classifier(family, model_dir, toy_task)
    base = logits(model, TEXTS)
    with torch.no_grad():
        model.method.prefix.add_(torch.randn(model.method.shape, generator=torch.Generator().manual_seed(1)))
    assert (logits(model, TEXTS) - base).abs().max() > 1e-3


@pytest.mark.parametrize("family", sorted(DECODERS) + ["llama"])
def test_decoder_text_follows_prefix_positions(family, model_dir, toy_task):
    """A prefix equal to the cached keys/values of real tokens must give exactly what the model computes for
    those tokens followed by the text: positions (learned, sinusoidal, ALiBi, RoPE) continue at L."""
    model = classifier(family, model_dir, toy_task)
    backbone, method = model.backbone, model.method
    ids = backbone.tokenizer(["alpha w1 w2 w3 beta w4 w5"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    head, text = ids[:, :4], ids[:, 4:]
    with torch.no_grad():
        full = backbone.body(input_ids=ids).last_hidden_state
        cache = backbone.body(input_ids=head, use_cache=True).cache
        method.prefix.copy_(torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]))
        prompted = method(backbone.embed(text), torch.ones_like(text), None)
        hidden = backbone(prompted.embeds, prompted.attention_mask, past_key_values=prompted.past_key_values)
    assert prompted.attention_mask.shape == (1, 4 + text.shape[1])
    torch.testing.assert_close(hidden, full[:, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_encoder_text_keeps_its_positions(family, model_dir, toy_task):
    model = classifier(family, model_dir, toy_task)
    seen = []
    hook = model.backbone.body.embeddings.position_embeddings.register_forward_hook(
        lambda module, args, out: seen.append(args[0].clone()))
    with_prefix = logits(model, TEXTS)
    method, model.method = model.method, None
    logits(model, TEXTS)
    model.method = method
    hook.remove()
    assert with_prefix.shape == (3, 2)
    assert len(seen) == 2
    assert torch.equal(*torch.broadcast_tensors(seen[0], seen[1]))


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("family", ["xglm", "bert"])
def test_save_load_round_trip(family, projection, model_dir, toy_task, tmp_path):
    run = fit(config(model_dir(family), epochs=2, projection=projection), progress=False)
    run.save(tmp_path / "run")
    saved = load_tensors(tmp_path / "run" / "prompt.safetensors")
    assert list(saved) == ["prefix"] and tuple(saved["prefix"].shape) == run.model.method.shape
    again = load(tmp_path / "run")
    assert again.model.method.materialized and list(dict(again.model.method.named_parameters())) == ["prefix"]
    texts = [t for t in toy_task.load("test", "deu_Latn")["text"]]
    assert torch.equal(logits(run.model, texts), logits(again.model, texts))
    # a new run starting from this one's prefix
    started = classifier(family, model_dir, toy_task, method=DeepPromptConfig(prompt_length=4, init=f"run:{tmp_path / 'run'}"))
    assert torch.equal(started.method.prefix, saved["prefix"])


def test_projection_folds_away_without_changing_logits(model_dir, toy_task):
    model = classifier("xlm-roberta", model_dir, toy_task, projection=True)
    before = logits(model, TEXTS)
    state = model.method.state_dict()
    assert list(state) == ["prefix"]  # never the projection net
    assert not model.method.materialized
    model.method.materialize()
    assert model.method.materialized and torch.equal(model.method.prefix, state["prefix"])
    assert torch.equal(logits(model, TEXTS), before)


def test_seeded_init_is_deterministic_and_bad_runs_fail_clearly(model_dir, toy_task, tmp_path):
    from xlprompt.core.errors import XlpromptError

    from xlprompt.models.backbone import Backbone
    from xlprompt.prompts import build_prompt_method

    a = classifier("gpt2", model_dir, toy_task)
    b = classifier("gpt2", model_dir, toy_task)
    assert torch.equal(a.method.prefix, b.method.prefix) and a.method.prefix.abs().max() <= 0.5
    # the projection too comes from the generator alone: deterministic, global RNG untouched
    backbone, rng = Backbone.load(str(model_dir("gpt2"))), torch.random.get_rng_state()
    p, q = (build_prompt_method(DeepPromptConfig(prompt_length=4, prefix_projection=True, projection_hidden=8), backbone,
                                torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(x, y) for x, y in zip(p.parameters(), q.parameters()))
    with pytest.raises(XlpromptError, match="does not exist"):
        classifier("gpt2", model_dir, toy_task, method=DeepPromptConfig(prompt_length=4, init=f"run:{tmp_path}"))
