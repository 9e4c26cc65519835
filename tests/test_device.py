"""Devices and precision on CPU (CI has no GPU): resolution and its errors, a bf16 frozen backbone that
trains, runs saved and loaded across dtypes, data parallel over 2 gloo processes, GPU placement of sweep
workers with a faked GPU count, and the CPU path's numbers pinned. Tests that need CUDA carry `gpu`."""
import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xlprompt import TrainConfig, fit, load
from xlprompt.cli import app
from xlprompt.execution.device import resolve_device, resolve_dtype, to_device
from xlprompt.core.errors import XlpromptError
from xlprompt.prompts.config import DeepPromptConfig, InputPromptConfig

from conftest import tiny_model, tiny_tokenizer

runner = CliRunner()
HAS_CUDA = torch.cuda.is_available()


def make_config(model_dir, **kw):
    base = dict(task="toy", model=str(model_dir), method=InputPromptConfig(prompt_length=3), epochs=2, batch_size=8,
                lr=0.1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------ resolution
def test_device_and_dtype_resolution_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # bf16 stays opt-in on CPU
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(XlpromptError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(XlpromptError, match="Unknown dtype 'int4'"):
        resolve_dtype("int4", torch.device("cpu"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a machine without CUDA gives")
def test_cuda_without_cuda_is_one_clear_error():
    assert resolve_device("auto").type in ("cpu", "mps")
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(XlpromptError, match="--device cpu"):
            resolve_device(spec)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error a machine without CUDA gives")
@pytest.mark.parametrize("command", ["train", "quickstart", "sweep", "evaluate", "serve"])
def test_cli_device_cuda_without_cuda_writes_nothing(command, tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "out"
    model = str(tiny_model_dir("bert"))
    args = {"train": ["train", "--task", "toy", "--model", model, "--out", str(out)],
            "quickstart": ["quickstart", "--out", str(out)],
            "sweep": ["sweep", str(tmp_path / "grid.toml"), "--store", str(out)],
            "evaluate": ["evaluate", str(tmp_path / "missing-run"), "--out", str(out / "r.json")],
            "serve": ["serve", "--model", model, "--port", "1"]}[command]
    (tmp_path / "grid.toml").write_text(f'[fixed]\ntask = "toy"\nmodel = "{model}"\n[axes]\nseed = [0]\n')
    res = runner.invoke(app, [*args, "--device", "cuda"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "--device cuda" in text and "Traceback" not in text
    assert not out.exists()


# ------------------------------------------------------------------------- precision on CPU
@pytest.mark.parametrize("family,method", [("bert", InputPromptConfig(prompt_length=3)), ("xglm", InputPromptConfig(prompt_length=3)),
                                           ("xlm-roberta", DeepPromptConfig(prompt_length=2))])
def test_bf16_frozen_backbone_trains_fp32_prompt_and_head(family, method, tiny_model_dir, toy_task):
    from xlprompt.models.classifier import build_classifier

    config = make_config(tiny_model_dir(family), method=method, epochs=4)
    model = build_classifier(config, toy_task, device="cpu", dtype="bf16")
    assert model.backbone.dtype == torch.bfloat16 and model.autocast_dtype is None
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    start = {k: v.clone() for part in model.trainable_state().values() for k, v in part.items()}
    run = fit(config, model=model, progress=False)
    assert run.curve[-1]["train_loss"] < run.curve[0]["train_loss"]  # the loss falls
    after = run.model.backbone.model.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(before[k], v) for k, v in after.items())
    trained = {k: v for part in run.model.trainable_state().values() for k, v in part.items()}
    assert all(v.dtype == torch.float32 for v in trained.values())  # fp32 master weights
    assert any(not torch.equal(start[k], trained[k]) for k in trained)  # the prompt/head moved
    assert run.info["speed"]["dtype"] == "bf16" and run.info["speed"]["device"] == "cpu"


def test_trained_backbone_keeps_fp32_weights_under_bf16_autocast(tiny_model_dir, toy_task):
    from xlprompt.prompts.config import FinetuneConfig

    config = make_config(tiny_model_dir("bert"), method=FinetuneConfig(), epochs=1)
    run = fit(config, progress=False, device="cpu", dtype="bf16")
    assert run.model.backbone.dtype == torch.float32 and run.model.autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert run.info["speed"]["dtype"] == "bf16"


def test_run_saved_and_loaded_across_dtypes(tiny_model_dir, toy_task, tmp_path):
    import numpy as np

    config = make_config(tiny_model_dir("xlm-roberta"), epochs=3)
    fit(config, progress=False, device="cpu", dtype="bf16").save(tmp_path / "run")
    from xlprompt.core import io

    assert all(t.dtype == torch.float32 for t in io.load_tensors(tmp_path / "run" / "prompt.safetensors").values())
    texts = toy_task.load("test", "deu_Latn")["text"].tolist()
    fp32 = load(tmp_path / "run", device="cpu", dtype="fp32")
    again = load(tmp_path / "run", device="cpu")
    bf16 = load(tmp_path / "run", device="cpu", dtype="bf16")
    assert fp32.model.backbone.dtype == torch.float32 and bf16.model.backbone.dtype == torch.bfloat16
    p32, p32b, p16 = (np.asarray(r.predict(texts)) for r in (fp32, again, bf16))
    assert np.array_equal(p32, p32b)
    assert (p32 == p16).mean() >= 0.9  # within the dtype's tolerance
    results = xlprompt_evaluate(bf16)
    assert results["speed"]["dtype"] == "bf16" and results["speed"]["device"] == "cpu"
    assert results["speed"]["peak_gpu_memory_mb"] is None and results["speed"]["batching"]["max_tokens"] == 2048


def xlprompt_evaluate(run):
    from xlprompt import evaluate

    return evaluate(run, "all", progress=False, token_cache=False, threads=1)


def test_gradient_checkpointing_gives_the_same_prompt(tiny_model_dir, toy_task):
    config = make_config(tiny_model_dir("bert"))
    plain = fit(config, progress=False, device="cpu")
    checkpointed = fit(config, progress=False, device="cpu", gradient_checkpointing=True)
    a, b = plain.model.trainable_state()["prompt"], checkpointed.model.trainable_state()["prompt"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert checkpointed.info["speed"]["gradient_checkpointing"] is True
    body = checkpointed.model.backbone.model
    assert getattr(body, "is_activation_checkpointing", None) or body.is_gradient_checkpointing
    assert not getattr(plain.model.backbone.model, "is_activation_checkpointing", False)


def test_cpu_batches_are_not_copied():
    from xlprompt.data.collate import Batch

    t = torch.zeros(2, 3, dtype=torch.long)
    batch = Batch(t, t, t.bool(), t[:, 0], t, t.bool(), t[:, 0], t[:, 0])
    assert to_device(batch, torch.device("cpu")).input_ids is t


# ----------------------------------------------------------------------- CPU numbers pinned
# Values of the CPU path before issue 12 (device/dtype) landed, reproduced bit for bit after it; a change
# here means the same config and seed no longer give the same numbers on CPU.
PINNED = {"bert": (-0.4242207524366677, [0.8822982311248779, 0.5751694440841675]),
          "xglm": (-2.4612071393057704, [2.4512314796447754, 2.2081656455993652])}


@pytest.mark.parametrize("family", sorted(PINNED))
def test_cpu_training_numbers_are_pinned(family, tiny_model_dir, toy_task):
    run = fit(make_config(tiny_model_dir(family)), progress=False)
    prompt = run.model.trainable_state()["prompt"]["embedding"]
    total, dev_losses = PINNED[family]
    assert float(prompt.double().sum()) == pytest.approx(total, rel=1e-6, abs=1e-6)
    assert [c["dev_loss"] for c in run.curve] == pytest.approx(dev_losses, rel=1e-6)
    again = fit(make_config(tiny_model_dir(family)), progress=False)
    assert torch.equal(prompt, again.model.trainable_state()["prompt"]["embedding"])  # bit-identical rerun


# ------------------------------------------------------------------------------ data parallel
def test_data_parallel_two_gloo_processes_equal_one(tmp_path, toy_task):
    pytest.importorskip("torch.distributed")
    from xlprompt.core import io

    model, kind = tiny_model("xlm-roberta")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0  # no per-process RNG
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tiny_tokenizer(kind).save_pretrained(model_dir)
    worker = Path(__file__).with_name("dp_worker.py")
    out = tmp_path / "dp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(model_dir), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(Path(str(out) + ".json").read_text()) == {"processes": 2, "world": 2}
    sys.path.insert(0, str(worker.parent))
    from dp_worker import config, state

    single = state(fit(config(str(model_dir)), progress=False, device="cpu"))
    parallel = io.load_tensors(out)
    assert set(single) == set(parallel)
    for k in single:
        assert torch.allclose(single[k], parallel[k], atol=1e-5), (k, (single[k] - parallel[k]).abs().max())


def test_shards_cover_the_global_batch():
    from xlprompt.execution.distributed import Replicas

    rows = list(range(7))
    shards = [Replicas(3, r).shard(rows) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert [Replicas(4, r).shard([9, 8]) for r in range(4)] == [[9], [8], [], []]
    assert Replicas().shard(rows) is rows


# ---------------------------------------------------------------------------- sweep placement
def test_sweep_places_one_worker_per_gpu_with_a_faked_gpu_count(monkeypatch):
    from xlprompt.execution import device
    from xlprompt.experiments import runner

    assert runner.gpu_slots(2, 2) == ["0", "1"]
    assert runner.gpu_slots(3, 2) == ["0", "1", "0"]
    assert runner.gpu_slots(4, 0) == []
    assert runner.default_workers("cpu") == 1
    monkeypatch.setattr(device, "cuda_count", lambda: 4)
    monkeypatch.setattr(runner, "_init_worker", runner._init_worker)
    from xlprompt.execution import plan

    monkeypatch.setattr(plan, "resolve_device", lambda spec=None: torch.device("cpu") if spec == "cpu"
                        else torch.device("cuda", 0))  # the plan resolves devices, once, for everyone
    assert runner.default_workers("auto") == 4
    assert runner.default_workers("cpu") == 1
    backend = runner._make_backend("local", None, None, None, device="auto")
    try:
        assert isinstance(backend, runner.PoolBackend) and backend.capacity == 4
        assert backend.slots == ["0", "1", "2", "3"] and backend.device == "cuda"
    finally:
        backend.close()
    cpu = runner._make_backend("local", 2, None, None, device="cpu")
    try:
        assert cpu.slots == [] and cpu.device == "cpu"
    finally:
        cpu.close()


def test_a_pool_worker_takes_its_own_gpu_slot(monkeypatch):
    from xlprompt.experiments.runner import _init_worker

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = queue.Queue()
    for slot in ("1", "0"):
        slots.put(slot)
    threads = torch.get_num_threads()
    try:
        _init_worker(1, slots)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        _init_worker(1, slots)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    finally:
        torch.set_num_threads(threads)
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def test_local_num_gpus_is_an_error():
    from xlprompt.experiments.runner import _make_backend

    with pytest.raises(XlpromptError, match="--num-gpus are for --backend ray"):
        _make_backend("local", None, None, None, num_gpus=1)


# ------------------------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_trained_run_loads_on_cpu_with_the_same_predictions(tiny_model_dir, toy_task, tmp_path):
    import numpy as np

    run = fit(make_config(tiny_model_dir("xlm-roberta")), progress=False, device="cuda", dtype="fp32")
    assert run.model.backbone.device.type == "cuda" and run.info["speed"]["peak_gpu_memory_mb"] > 0
    run.save(tmp_path / "run")
    texts = toy_task.load("test", "deu_Latn")["text"].tolist()
    gpu = load(tmp_path / "run", device="cuda", dtype="fp32")
    cpu = load(tmp_path / "run", device="cpu")
    assert np.array_equal(gpu.predict(texts), cpu.predict(texts))
    results = xlprompt_evaluate(gpu)
    assert results["speed"]["batching"]["max_tokens"] == 65536 and results["speed"]["peak_gpu_memory_mb"] > 0


def test_serving_a_bf16_backbone_on_cpu_agrees_with_fp32(tiny_model_dir, toy_task, tmp_path):
    from xlprompt.serving.multi import PromptBank

    model = tiny_model_dir("xlm-roberta")
    runs = {"p": make_config(model, epochs=3), "d": make_config(model, method=DeepPromptConfig(prompt_length=2), epochs=3)}
    for name, config in runs.items():
        fit(config, progress=False, device="cpu").save(tmp_path / name)
    folders = {name: tmp_path / name for name in runs}
    texts = toy_task.load("test", "deu_Latn")["text"].tolist()
    names = [("p", "d")[i % 2] for i in range(len(texts))]
    fp32 = PromptBank.from_runs(folders, device="cpu", dtype="fp32", precision="fp32").classify(names, texts)
    bank = PromptBank.from_runs(folders, device="cpu", dtype="bf16")
    assert bank.backbone.dtype == torch.bfloat16
    bf16 = bank.classify(names, texts)
    agree = sum(a.label_index == b.label_index for a, b in zip(fp32, bf16)) / len(texts)
    assert agree >= 0.9
