"""The device check: xlprompt's own code paths on one GPU, at the shapes of the studies' models, in minutes,
with no network and no downloaded weights (random weights cost exactly what trained ones do).

    python benchmarks/gpu_check.py                       # on a machine with one CUDA GPU (< 4 min)
    python benchmarks/gpu_check.py --out gpu_check.json  # also keep every measurement
    python benchmarks/gpu_check.py --smoke               # tiny shapes, 3 languages: any device, CPU included
    python benchmarks/gpu_check.py --pack                # copy the tokenizer files into benchmarks/gpu_assets/

What it runs (see benchmarks/README.md, "gpu_check.py"):
1. evaluation: `xlprompt.evaluate` on all 205 SIB-200 test languages with a random multilingual-e5-small-
   shaped model (BertModel, loaded through `Backbone.load` in fp32 with TF32 and in bf16), a 10-vector
   prompt, the device's default token budget; forward and end-to-end seconds from a warm token cache;
2. GPU vs CPU: that model's logits on 3 languages on the GPU and on the CPU: fp32 (TF32 off; identical
   argmax, largest logit difference) and bf16 (argmax agreement);
3. quickstart's work: `fit` (L=10, all 701 English sentences, 3 epochs of batch 8) and `evaluate` on all 205
   languages with the e5-small-shaped model, end to end from a cold token cache;
4. training, xlprompt vs PEFT on the same batches of English SIB-200 (batch 32, prompt 10, bf16 weights):
   XGLM-564M shape (PEFT PromptTuningConfig, CAUSAL_LM) and XLM-R-large shape (PEFT prompt tuning,
   FEATURE_EXTRACTION + the same mean-pool and linear head); examples/s (median step) and peak GPU
   memory above the weights, best of two rounds in alternating order;
5. the XGLM-7.5B shape: one `xlprompt.fit` step in bf16 (peak memory: the largest model of the studies
   fits on one GPU).
It prints one table headed by the device's name.

Tokenizer: the offline default's (XLM-R SentencePiece, 250,002 pieces, ~17 MB), from `--tokenizer DIR`,
else benchmarks/gpu_assets/tokenizer/ (written by --pack; git-ignored, so a GPU machine that gets a copy
of the working tree but no model cache gets it too), else the converted offline default in the cache.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "gpu_assets" / "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
COMPARE_LANGS = ["eng_Latn", "zho_Hans", "arb_Arab"]
PROMPT_LENGTH, LR = 10, 5e-3
# the real shapes (vocabulary sizes of the real checkpoints; our tokenizer's ids are all below them)
SHAPES = {
    "e5-small": dict(vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512),
    "xglm-564M": dict(vocab_size=256008, d_model=1024, num_layers=24, attention_heads=16, ffn_dim=4096,
                      max_position_embeddings=2048),
    "xlm-r-large": dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=514),
    "xglm-7.5B": dict(vocab_size=256008, d_model=4096, num_layers=32, attention_heads=32, ffn_dim=16384,
                      max_position_embeddings=2048),
}
SMOKE = {  # the same architectures, tiny: the whole check runs on a CPU in about a minute
    "e5-small": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "xglm-564M": dict(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64),
    "xlm-r-large": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "xglm-7.5B": dict(d_model=64, num_layers=2, attention_heads=4, ffn_dim=128),
}


def tokenizer_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    if (ASSETS / "tokenizer.json").is_file():
        return ASSETS
    from xlprompt.models.offline_default import offline_default_dir

    return offline_default_dir()


def pack() -> None:
    from xlprompt.models.offline_default import offline_default_dir

    source = offline_default_dir()
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, ASSETS / name)
    size = sum(p.stat().st_size for p in ASSETS.iterdir()) / 2 ** 20
    print(f"copied the offline default's tokenizer ({size:.0f} MB) to {ASSETS}")


def shape(name: str, smoke: bool) -> dict:
    return {**SHAPES[name], **(SMOKE[name] if smoke else {})}


def random_model(name: str, smoke: bool, device: torch.device, dtype: torch.dtype):
    """A random-weight model of `name`'s shape, built on `device` in `dtype` (no fp32 copy first)."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = shape(name, smoke)
    config = {"e5-small": lambda: tf.BertConfig(pad_token_id=1, **cfg),
              "xlm-r-large": lambda: tf.XLMRobertaConfig(pad_token_id=1, **cfg)}.get(
        name, lambda: tf.XGLMConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **cfg))()
    cls = {"e5-small": tf.BertModel, "xlm-r-large": tf.XLMRobertaModel}.get(name, tf.XGLMForCausalLM)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(config).eval()
    finally:
        torch.set_default_dtype(previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Drop what earlier checks left, so each check's weights and peaks are its own."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocated_mb(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None


def mb(value) -> str:
    return "n/a (CPU)" if value is None else f"{value / 1024:.2f} GB"


# ---------------------------------------------------------------------------------- 1+2: evaluation
def e5_run(model_dir: Path, device, dtype):
    from xlprompt.runs.config import TrainConfig
    from xlprompt.models.classifier import build_classifier
    from xlprompt.prompts import InputPromptConfig
    from xlprompt.runs.run import Run
    from xlprompt.tasks import get_task

    config = TrainConfig(model=str(model_dir), method=InputPromptConfig(prompt_length=PROMPT_LENGTH))
    return Run(config=config, model=build_classifier(config, get_task("sib200"), device=device, dtype=dtype))


def check_evaluation(model_dir: Path, device, langs, cache: Path, rows: list) -> None:
    from xlprompt import evaluate

    for dtype in ("fp32", "bf16"):
        run = e5_run(model_dir, device, dtype)
        evaluate(run, langs, progress=False, token_cache=str(cache))  # warms the token cache (and the GPU)
        results = evaluate(run, langs, progress=False, token_cache=str(cache))
        s = results["speed"]
        tf32 = " (TF32)" if s["dtype"] == "fp32" and device.type == "cuda" else ""
        rows.append({"check": "evaluate, e5-small shape", "setting": f"{len(results['languages'])} languages, "
                     f"{s['sentences']:,} rows, {s['dtype']}{tf32}, {s['batching']['max_tokens']:,}-token batches",
                     "result": f"forward {s['seconds']['forward']:.2f} s ({s['tokens_per_second']:,.0f} tokens/s), "
                               f"total {s['seconds']['total']:.2f} s, peak {mb(s['peak_gpu_memory_mb'])}",
                     "forward_seconds": s["seconds"]["forward"], "total_seconds": s["seconds"]["total"],
                     "tokens": s["tokens"], "peak_gpu_memory_mb": s["peak_gpu_memory_mb"], "dtype": s["dtype"]})
        del run


def check_quickstart(model_dir: Path, device, smoke: bool, rows: list) -> None:
    """`xlprompt quickstart`'s work (quickstart.py: fit L=10 on all 701 English sentences for 3 epochs of
    batch 8, then evaluate every language) on the e5-small shape, timed end to end, cold token cache."""
    from xlprompt import evaluate, fit
    from xlprompt.runs.config import TrainConfig
    from xlprompt.prompts import InputPromptConfig

    free(device)
    started = time.perf_counter()
    config = TrainConfig(model=str(model_dir), method=InputPromptConfig(prompt_length=PROMPT_LENGTH),
                         shots=4 if smoke else None, epochs=1 if smoke else 3)
    run = fit(config, progress=False, device=device)
    results = evaluate(run, COMPARE_LANGS if smoke else "all", progress=False)
    seconds = time.perf_counter() - started
    rows.append({"check": "quickstart's work, e5-small shape", "setting": f"fit L={PROMPT_LENGTH}, "
                 f"{run.info['train_examples']} rows x {config.epochs} epochs, batch {config.batch_size}; evaluate "
                 f"{len(results['languages'])} languages, {results['speed']['dtype']}",
                 "result": f"{seconds:.1f} s end to end (training {run.info['train_seconds']:.1f} s, evaluation "
                           f"{results['seconds']:.1f} s)",
                 "seconds": seconds, "train_seconds": run.info["train_seconds"],
                 "evaluation_seconds": results["seconds"]})
    del run


def logits(run, frames, task) -> np.ndarray:
    from xlprompt.data.collate import Encoded
    from xlprompt.evaluation.evaluate import predict_encoded

    tok = run.model.backbone.tokenizer
    encoded = Encoded.concat([task.encode(tok, f, run.config.max_length) for f in frames])
    return predict_encoded(run.model, encoded, batch_size=64, max_tokens=None)


def check_cpu_agreement(model_dir: Path, device, rows: list) -> None:
    from xlprompt.tasks import get_task

    task = get_task("sib200")
    frames = [task.load("test", code, None) for code in COMPARE_LANGS]
    cpu = logits(e5_run(model_dir, "cpu", "fp32"), frames, task)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        run = e5_run(model_dir, device, "fp32")
        torch.backends.cuda.matmul.allow_tf32 = False  # strict fp32 for the comparison
        on_device = logits(run, frames, task)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    bf16 = logits(e5_run(model_dir, device, "bf16"), frames, task)
    same = float((cpu.argmax(-1) == on_device.argmax(-1)).mean())
    diff = float(np.abs(cpu - on_device).max())
    agree = float((cpu.argmax(-1) == bf16.argmax(-1)).mean())
    rows.append({"check": f"{device.type} vs CPU predictions", "setting": f"e5-small shape, {len(COMPARE_LANGS)} "
                 f"languages, {len(cpu)} rows, fp32 (TF32 off) / bf16",
                 "result": f"fp32: argmax identical {same:.1%}, max abs logit difference {diff:.1e}; bf16: argmax "
                           f"agreement {agree:.1%}",
                 "fp32_argmax_identical": same, "fp32_max_abs_diff": diff, "bf16_argmax_agreement": agree,
                 "fp32_ok": same == 1.0 and diff <= 1e-4})


# --------------------------------------------------------------------------------------- 3: training
def sib_batches(tokenizer, batch: int, steps: int):
    from xlprompt.data.sib200 import load_sib200
    from xlprompt.tasks import get_task

    encoded = get_task("sib200").encode(tokenizer, load_sib200("train", "eng_Latn"), 128)
    order = np.random.default_rng(0).permutation(len(encoded)).tolist() * (1 + steps * batch // len(encoded))
    return encoded, [order[i * batch:(i + 1) * batch] for i in range(steps)]


def timed(step, batches, device) -> tuple[float, float | None]:
    """Median step seconds after one warm-up step, and the peak memory of the timed steps."""
    step(batches[0])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for rows in batches[1:]:
        start = time.perf_counter()
        step(rows)  # ends in .item(): synchronised
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return statistics.median(seconds), peak


def xlprompt_step(backbone, encoded, device):
    """`xlprompt.training.fit.fit`'s step: collate, to_device, forward, head_loss, backward, AdamW."""
    from xlprompt.runs.config import TrainConfig
    from xlprompt.execution.device import to_device
    from xlprompt.models.classifier import build_classifier
    from xlprompt.models.heads import head_loss
    from xlprompt.prompts import InputPromptConfig
    from xlprompt.tasks import get_task
    from xlprompt.training.fit import param_groups

    config = TrainConfig(method=InputPromptConfig(prompt_length=PROMPT_LENGTH), lr=LR)
    model = build_classifier(config, get_task("sib200"), backbone=backbone)
    optimizer = torch.optim.AdamW(param_groups(model, config))
    collate = model.collator()
    model.train()

    def step(rows):
        batch = to_device(collate(encoded, rows), device)
        loss = head_loss(model(batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def check_training(name: str, tokenizer, device, smoke: bool, batch: int, steps: int, rows: list) -> None:
    from train_speed import peft_step_fn  # benchmarks/train_speed.py: PEFT wired as a user would

    from xlprompt.models.backbone import Backbone

    free(device)
    kind = "decoder" if name.startswith("xglm") else "encoder"
    model = random_model(name, smoke, device, torch.bfloat16)
    backbone = Backbone(model, tokenizer, kind, f"{name}-random")
    encoded, batches = sib_batches(tokenizer, batch, steps + 1)
    weights = allocated_mb(device)
    result, step_fns = {}, {}
    for system in ("xlprompt", "peft"):
        try:
            step_fns[system] = (xlprompt_step(backbone, encoded, device) if system == "xlprompt"
                             else peft_step_fn(backbone, encoded, device)[0])
        except Exception as exc:  # noqa: BLE001 - a PEFT refusal is a result too
            result[system] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    # two rounds in alternating order, each system's faster median kept: on a fresh GPU the first system
    # timed pays one-off costs (kernel selection, allocator growth) that one warm-up step does not absorb
    # (measured on an H200: xlprompt 198 ms first, 49 ms second; PEFT 46 / 45 ms)
    timings: dict[str, list] = {system: [] for system in step_fns}
    for order in (list(step_fns), list(step_fns)[::-1]):
        for system in order:
            try:
                timings[system].append(timed(step_fns[system], batches, device))
            except Exception as exc:  # noqa: BLE001
                result[system] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    for system, runs in timings.items():
        if system not in result and runs:
            median = min(m for m, _ in runs)
            peaks = [p for _, p in runs if p is not None]
            result[system] = {"examples_per_second": batch / median,
                              "memory_above_weights_mb": max(peaks) - weights if peaks else None,
                              "rounds_ms": [round(m * 1000, 1) for m, _ in runs]}
    x, p = result["xlprompt"], result["peft"]
    if "error" in x:
        raise RuntimeError(f"xlprompt training failed on {name}: {x['error']}")
    speed = x["examples_per_second"] / p["examples_per_second"] if "error" not in p else None
    memory = (x["memory_above_weights_mb"] / p["memory_above_weights_mb"]
              if "error" not in p and p.get("memory_above_weights_mb") else None)
    text = (f"xlprompt {x['examples_per_second']:.0f} ex/s, {mb(x['memory_above_weights_mb'])} above weights; "
            + (f"PEFT {p['examples_per_second']:.0f} ex/s, {mb(p['memory_above_weights_mb'])}; speed "
               f"{speed:.2f}x" + (f", memory {memory:.2f}x" if memory is not None else "")
               if "error" not in p else f"PEFT: {p['error']}"))
    rows.append({"check": f"train, {name} shape", "setting": f"bf16 weights, batch {batch}, prompt "
                 f"{PROMPT_LENGTH}, {steps} timed steps, same batches, best of 2 alternating rounds", "result": text,
                 "weights_mb": weights, **{f"{k}_{m}": v for k, d in result.items() for m, v in d.items()},
                 "speed_ratio": speed, "memory_ratio": memory})
    del model, backbone


# ------------------------------------------------------------------------------------ 4: the largest
def check_largest(tokenizer, device, smoke: bool, batch: int, rows: list) -> None:
    from xlprompt import fit
    from xlprompt.runs.config import TrainConfig
    from xlprompt.models.backbone import Backbone
    from xlprompt.models.classifier import build_classifier
    from xlprompt.prompts import InputPromptConfig
    from xlprompt.tasks import get_task

    name = "xglm-7.5B"
    free(device)
    backbone = Backbone(random_model(name, smoke, device, torch.bfloat16), tokenizer, "decoder", f"{name}-random")
    params = backbone.num_parameters()
    weights = allocated_mb(device)
    # 4 sentences per class = 28 rows: one step of a 32-row batch, then the 7-row dev set
    config = TrainConfig(method=InputPromptConfig(prompt_length=PROMPT_LENGTH), shots=4, epochs=1, batch_size=batch)
    run = fit(config, model=build_classifier(config, get_task("sib200"), backbone=backbone), progress=False)
    s = run.info["speed"]
    rows.append({"check": f"train, {name} shape", "setting": f"{params / 1e9:.2f} B parameters, bf16, one "
                 f"xlprompt.fit step of {run.info['train_examples']} rows",
                 "result": f"step {s['step_seconds_total']:.2f} s, peak {mb(s['peak_gpu_memory_mb'])} "
                           f"(weights {mb(weights)})",
                 "parameters": params, "weights_mb": weights, "peak_gpu_memory_mb": s["peak_gpu_memory_mb"],
                 "step_seconds": s["step_seconds_total"]})
    del run, backbone


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 3 languages, few steps: any device")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (default auto)")
    ap.add_argument("--tokenizer", help="folder with the offline default's tokenizer files")
    ap.add_argument("--pack", action="store_true", help="copy the tokenizer files to benchmarks/gpu_assets/ and stop")
    ap.add_argument("--out", help="write every measurement as JSON")
    args = ap.parse_args(argv)
    if args.pack:
        pack()
        return 0
    sys.path.insert(0, str(HERE))
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from xlprompt.execution.device import configure, resolve_device
    from xlprompt.core.io import write_json

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke:
        print(f"error: no CUDA GPU here ({device}); the full check needs one. `--smoke` runs tiny shapes on any "
              "device.", file=sys.stderr)
        return 2
    configure(device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} (no GPU)"
    tok_dir = tokenizer_dir(args.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batch, steps = (8, 2) if args.smoke else (32, 10)
    langs = COMPARE_LANGS if args.smoke else "all"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="xlprompt-gpu-check-") as tmp:
        model_dir = Path(tmp) / "e5-small-random"
        random_model("e5-small", args.smoke, torch.device("cpu"), torch.float32).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        check_evaluation(model_dir, device, langs, Path(tmp) / "token-cache", rows)
        check_cpu_agreement(model_dir, device, rows)
        check_quickstart(model_dir, device, args.smoke, rows)
    for model in ("xglm-564M", "xlm-r-large"):
        check_training(model, tokenizer, device, args.smoke, batch, steps, rows)
    check_largest(tokenizer, device, args.smoke, 32, rows)
    seconds = time.perf_counter() - started
    header = (f"xlprompt device check on {name} · torch {torch.__version__} · "
              f"{'smoke (tiny shapes)' if args.smoke else 'real shapes, random weights'} · {seconds:.0f} s")
    print(header)
    print("| check | setting | result |\n|---|---|---|")
    for row in rows:
        print(f"| {row['check']} | {row['setting']} | {row['result']} |")
    if args.out:
        write_json(args.out, {"device": str(device), "device_name": name, "smoke": args.smoke, "seconds": seconds,
                              "torch": torch.__version__, "tokenizer": str(tok_dir), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
