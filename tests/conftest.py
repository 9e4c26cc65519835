"""Tiny random models built from configs, and a learnable toy task: no network, seconds per test."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from a second thread, and OpenMP threads spin badly when the 2 cores are shared
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XLPROMPT_DATA", REPO.parent / "shared" / "data"))

WORDS = [f"w{i}" for i in range(40)] + ["yes", "no", "alpha", "beta"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def tiny_tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)])
    elif kind == "xglm":  # XGLM prepends </s> as its bos
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def tiny_model(family: str):
    import transformers as tf

    torch.manual_seed(0)
    vocab = len(SPECIALS) + len(WORDS)
    # a wider init than the usual 0.02 makes random decoders sensitive enough to their input that a
    # prompt alone can learn the toy task within a few steps
    init = dict(initializer_range=0.2)
    if family == "xglm":
        cfg = tf.XGLMConfig(vocab_size=vocab, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                            max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2, init_std=0.2)
        return tf.XGLMForCausalLM(cfg), "xglm"
    if family == "bloom":
        cfg = tf.BloomConfig(vocab_size=vocab, hidden_size=32, n_layer=2, n_head=4, pad_token_id=1,
                             bos_token_id=0, eos_token_id=2, **init)
        return tf.BloomForCausalLM(cfg), "decoder"
    if family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1, **init)
        return tf.GPT2LMHeadModel(cfg), "decoder"
    if family == "xlm-roberta":
        cfg = tf.XLMRobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=132, pad_token_id=1, **init)
        return tf.XLMRobertaModel(cfg), "encoder"
    if family == "bert":
        cfg = tf.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=128, pad_token_id=1, **init)
        return tf.BertModel(cfg), "encoder"
    raise ValueError(family)


FAMILIES = ["xglm", "bloom", "gpt2", "xlm-roberta", "bert"]
DECODERS = {"xglm", "bloom", "gpt2"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: family -> folder with a saved tiny model and tokenizer (loads like a hub checkpoint)."""
    made = {}

    def make(family: str) -> Path:
        if family not in made:
            model, tok_kind = tiny_model(family)
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            model.save_pretrained(path)
            tiny_tokenizer(tok_kind).save_pretrained(path)
            made[family] = path
        return made[family]

    return make


def toy_frame(n: int, seed: int, language: str) -> pd.DataFrame:
    """Label 1 when the text starts with 'alpha', 0 with 'beta'; the rest is noise words.
    'Languages' differ only in which noise words they use, so a prompt trained on one can transfer."""
    rng = np.random.default_rng(seed)
    offset = 0 if language == "eng_Latn" else 20
    labels = rng.integers(0, 2, n)
    texts = []
    for y in labels:
        noise = " ".join(f"w{offset + k}" for k in rng.integers(0, 20, rng.integers(2, 9)))
        texts.append(("alpha " if y == 1 else "beta ") + noise)
    return pd.DataFrame({"index_id": np.arange(n), "text": texts, "label": labels.astype(int)})


def _register_toy():
    from xlprompt.tasks import Task, register_task

    sizes = {"train": (64, 1), "dev": (16, 2), "test": (40, 3)}

    def load(split, language, data_dir=None):
        n, seed = sizes[split]
        return toy_frame(n, seed + (0 if language == "eng_Latn" else 100), language)

    return register_task(Task(name="toy", label_names=("beta", "alpha"), load=load,
                              languages=lambda data_dir=None: ["deu_Latn", "eng_Latn"],
                              label_words={"xglm": ["no", "yes"]}, description="toy task for tests",
                              parallel_split="test"))  # rows share index_ids across languages


@pytest.fixture(scope="session")
def toy_task():
    return _register_toy()


def _env_folder_in_tmp(name: str, tmp_path_factory, label: str):
    old = os.environ.get(name)
    os.environ[name] = str(tmp_path_factory.mktemp(label))
    yield
    if old is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = old


@pytest.fixture(scope="session", autouse=True)
def _an_avx2_machine_for_every_fixture():
    """The same fake for fixtures of every scope: a module-scoped fixture that trains runs before any
    function-scoped one, and on the real CPU its plan would hang on a timing probe (bf16 or int8 where this
    CPU measured them faster at that moment), so a test's numbers would depend on the CPU and its load."""
    from machines import use_machine

    with pytest.MonkeyPatch.context() as patch:
        use_machine(patch, "avx2")
        yield


@pytest.fixture(autouse=True)
def _an_avx2_machine(monkeypatch):
    """Every test sees the same CPU kind, whatever runs it: an AVX2-only one, where auto is fp32 throughout
    (tests/machines.py). A test about another kind calls `use_machine` itself."""
    from machines import use_machine

    use_machine(monkeypatch, "avx2")


@pytest.fixture(scope="session", autouse=True)
def _machine_cache_in_tmp(tmp_path_factory):
    """Measurements a test makes for real (test_plan.py) go to a temporary folder, not the user's cache."""
    yield from _env_folder_in_tmp("XLPROMPT_MACHINE_CACHE", tmp_path_factory, "machine-cache")


@pytest.fixture(scope="session", autouse=True)
def _token_cache_in_tmp(tmp_path_factory):
    """Evaluation caches tokenized datasets on disk: keep the tests' entries out of the user's cache."""
    yield from _env_folder_in_tmp("XLPROMPT_TOKEN_CACHE", tmp_path_factory, "token-cache")


@pytest.fixture(scope="session", autouse=True)
def _calibration_cache_in_tmp(tmp_path_factory):
    """int8-checked thresholds of the tests' runs go to a temporary folder, not the user's cache."""
    yield from _env_folder_in_tmp("XLPROMPT_CALIBRATION_CACHE", tmp_path_factory, "calibration-cache")


@pytest.fixture(scope="session", autouse=True)
def _engine_cache_in_tmp(tmp_path_factory):
    """ONNX exports of the tiny models go to a temporary folder, not the user's cache."""
    yield from _env_folder_in_tmp("XLPROMPT_ENGINE_CACHE", tmp_path_factory, "engine-cache")
