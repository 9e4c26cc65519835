"""Training speed and peak memory: xlprompt vs Hugging Face PEFT prompt tuning (and full fine-tuning).

Same model, texts, batches (8), prompt length (10), steps and torch thread count for every system. Each
system runs in its own child process; its memory is the peak RSS while training (VmHWM, reset once the model
is built, so it includes the resident model but not the build's transient copies), or the CUDA peak on a
GPU. Systems alternate over rounds and the fastest round counts, so a busy machine hurts all of them alike.
Ratios are system / PEFT prompt tuning, measured in this run. See benchmarks/README.md.

    python benchmarks/train_speed.py --quick           # < 10 min on 2 cores
    python benchmarks/train_speed.py --out speed.json  # full XGLM-564M-shaped decoder, longer
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from isolated import print_result, rss_mb, run_child  # benchmarks/isolated.py, beside this script

XGLM_564M = dict(vocab_size=256008, d_model=1024, num_layers=24, attention_heads=16, ffn_dim=4096,
                 max_position_embeddings=2048)
PROMPT_LENGTH, BATCH_SIZE, LR = 10, 8, 5e-3
SYSTEMS = {  # name -> (description, models it applies to)
    "xlprompt": ("xlprompt input prompt, model frozen", ("e5", "xglm")),
    "xlprompt-labels": ("xlprompt input prompt, loss over label rows only", ("xglm",)),
    "peft": ("PEFT prompt tuning (PromptTuningConfig)", ("e5", "xglm")),
    "finetune": ("xlprompt full fine-tuning (FinetuneConfig)", ("e5", "xglm")),
}
MODEL_NAMES = {"e5": "multilingual-e5-small (encoder)", "xglm": "xglm-564M-random (decoder)"}


# ----------------------------------------------------------------------------------------------- child


def load_backbone(model: str, layers: int):
    from xlprompt.models.backbone import Backbone, resolve_model_source

    if model == "e5":
        return Backbone.load("multilingual-e5-small")
    import torch
    from transformers import AutoTokenizer, XGLMConfig, XGLMForCausalLM

    # no XGLM tokenizer offline: the offline default's (XLM-R SentencePiece, 250,002 pieces < 256,008;
    # <s>=0 <pad>=1 </s>=2 as in XGLM's config)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("multilingual-e5-small")[0],
                                              local_files_only=True)
    torch.manual_seed(0)
    config = XGLMConfig(**{**XGLM_564M, "num_layers": layers})
    return Backbone(XGLMForCausalLM(config).eval(), tokenizer, "decoder", "xglm-564M-random")


def batches(tokenizer, n_batches: int):
    """The same rows for every system: a seeded permutation of English SIB-200 train, cut into batches."""
    import numpy as np

    from xlprompt.data.collate import encode_texts
    from xlprompt.data.sib200 import load_sib200

    df = load_sib200("train", "eng_Latn")
    encoded = encode_texts(tokenizer, df["text"].tolist(), df["label"].tolist(), max_length=128)
    order = np.random.default_rng(0).permutation(len(encoded)).tolist()
    order = order * (1 + n_batches * BATCH_SIZE // len(order))
    return encoded, [order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE] for i in range(n_batches)]


def xlprompt_step_fn(system, backbone, encoded, device):
    """The step `xlprompt.training.fit.fit` runs: collate, forward, cross_entropy, zero_grad, backward, AdamW."""
    import torch
    import torch.nn.functional as F

    from xlprompt.runs.config import TrainConfig
    from xlprompt.models.classifier import build_classifier
    from xlprompt.prompts import FinetuneConfig, InputPromptConfig
    from xlprompt.tasks import get_task
    from xlprompt.training.fit import param_groups

    method = FinetuneConfig() if system == "finetune" else InputPromptConfig(prompt_length=PROMPT_LENGTH)
    config = TrainConfig(method=method, batch_size=BATCH_SIZE, lr=LR, seed=0,
                         loss_over="labels" if system == "xlprompt-labels" else "vocabulary")
    model = build_classifier(config, get_task("sib200"), backbone=backbone).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config), weight_decay=config.weight_decay)
    collate = model.collator()
    model.train()
    info = {"label_token_ids": model.head.token_ids.tolist() if hasattr(model.head, "token_ids") else None}

    def step(rows):
        batch = collate(encoded, rows)
        batch.__dict__.update({k: v.to(device) for k, v in vars(batch).items()})
        loss = F.cross_entropy(model(batch), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step, model, info


def peft_step_fn(backbone, encoded, device):
    """PEFT prompt tuning wired as a user would: decoders as CAUSAL_LM with HF's own loss on the label
    word's token at the end (labels -100 elsewhere); encoders as FEATURE_EXTRACTION + mean-pool + linear."""
    import torch
    import torch.nn.functional as F
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from xlprompt.models.heads import verbalizer_token_ids
    from xlprompt.tasks import get_task

    task = get_task("sib200")
    tok = backbone.tokenizer
    decoder = backbone.kind == "decoder"
    peft_config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM if decoder else TaskType.FEATURE_EXTRACTION,
                                     num_virtual_tokens=PROMPT_LENGTH, num_layers=backbone.num_layers,
                                     token_dim=backbone.hidden_size, num_attention_heads=backbone.num_heads)
    model = get_peft_model(backbone.model, peft_config).to(device)
    head = None if decoder else torch.nn.Linear(backbone.hidden_size, task.num_labels).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + (list(head.parameters()) if head else [])
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    words = verbalizer_token_ids(tok, task.label_words["xglm"]) if decoder else None
    model.train()

    def collate(rows):
        seqs, targets = [], []
        for i in rows:
            ids = list(encoded.token_ids[i])
            if decoder:  # [<s>] text + label word (its first piece); no </s>: same length as xlprompt's
                if len(ids) > 1 and ids[-1] == tok.eos_token_id:
                    ids = ids[:-1]
                ids = ids + [words[encoded.labels[i]]]
            seqs.append(ids)
            targets.append([-100] * (len(ids) - 1) + [ids[-1]])
        width = max(map(len, seqs))
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for r, (ids, tg) in enumerate(zip(seqs, targets)):
            input_ids[r, :len(ids)], mask[r, :len(ids)], labels[r, :len(ids)] = (
                torch.tensor(ids), 1, torch.tensor(tg))
        return input_ids.to(device), mask.to(device), labels.to(device)

    def step(rows):
        input_ids, mask, labels = collate(rows)
        if decoder:  # full-vocabulary logits at every position, HF's causal-LM loss
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        else:
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            full_mask = torch.cat([torch.ones(len(rows), PROMPT_LENGTH, device=device), mask], 1)
            full_mask = full_mask[:, -hidden.shape[1]:].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * full_mask).sum(1) / full_mask.sum(1).clamp_min(1.0)
            target = torch.tensor([encoded.labels[i] for i in rows], device=device)
            loss = F.cross_entropy(head(pooled.float()), target)  # fp32 head over a bf16/fp16 model too
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    modules = torch.nn.ModuleList([model] + ([head] if head is not None else []))
    return step, modules, {"label_token_ids": words}


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(spec["model"], spec["layers"])
    encoded, rows = batches(backbone.tokenizer, spec["warmup"] + spec["steps"])
    if spec["system"] == "peft":
        step, model, info = peft_step_fn(backbone, encoded, device)
    else:
        step, model, info = xlprompt_step_fn(spec["system"], backbone, encoded, device)
    loaded_mb = rss_mb()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    setup_peak_mb = rss_mb("VmHWM")
    try:  # reset VmHWM (and so wait4's maxrss): the peak then covers training only, not the model build
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    for r in rows[:spec["warmup"]]:
        step(r)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses, tokens = [], [], 0
    for r in rows[spec["warmup"]:]:
        start = time.perf_counter()
        losses.append(step(r))  # .item() synchronises
        times.append(time.perf_counter() - start)
        tokens += sum(len(encoded.token_ids[i]) for i in r)
    out = {**spec, **info, "step_seconds": times, "losses": losses,
           "examples_per_second": len(times) * BATCH_SIZE / sum(times), "text_tokens": tokens,
           "trainable_parameters": trainable, "rss_after_load_mb": loaded_mb, "setup_peak_rss_mb": setup_peak_mb,
           "train_peak_rss_mb": rss_mb("VmHWM") if reset else None,
           "torch_threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ---------------------------------------------------------------------------------------------- parent
def run_system(spec: dict, log) -> dict:
    """Run one system in a fresh interpreter with the spec's thread count."""
    threads = {"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    result, peak = run_child(__file__, spec, log, f"{spec['system']} on {spec['model']}", env=threads)
    result["process_peak_rss_mb"] = max(peak, result["setup_peak_rss_mb"])
    # the memory compared: CUDA peak on a GPU, else the RSS peak while training (VmHWM reset after the
    # model was built; it includes the resident model), else the whole process's peak
    result["memory_mb"] = result.get("cuda_peak_mb") or result["train_peak_rss_mb"] or result["process_peak_rss_mb"]
    return result


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def auto_threads(cores: int) -> tuple[int, str]:
    """All cores on a quiet machine; 1 thread when others keep the CPUs busy (OpenMP with 2 threads
    degrades badly under contention, and it would hurt the systems unevenly)."""
    load = os.getloadavg()[0]
    if load > 0.5 * cores:
        return 1, f"1 (auto: load average {load:.1f} on {cores} cores; pass --threads {cores} to override)"
    return cores, f"{cores} (auto: all cores, machine quiet)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 decoder layers, 3 steps, 1 round (< 10 min)")
    ap.add_argument("--models", default="e5,xglm", help="comma list of: e5, xglm")
    ap.add_argument("--steps", type=int, help="timed steps per round (default 20; quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 2; quick 1)")
    ap.add_argument("--rounds", type=int, help="times every system runs, alternating order (default 3; quick 1)")
    ap.add_argument("--layers", type=int, help="XGLM layers (default 24; quick 4)")
    ap.add_argument("--threads", type=int, help="torch threads in every child (default: auto)")
    ap.add_argument("--no-finetune", action="store_true", help="skip full fine-tuning")
    ap.add_argument("--out", help="write all measurements as JSON (atomic)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print_result(child(json.loads(args.child)))
        return

    from xlprompt.core.io import write_json

    q = args.quick
    steps = args.steps or (3 if q else 20)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    rounds = args.rounds or (1 if q else 3)
    layers = args.layers or (4 if q else XGLM_564M["num_layers"])
    cores = len(os.sched_getaffinity(0))
    threads, threads_note = (args.threads, str(args.threads)) if args.threads else auto_threads(cores)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    systems = {m: [s for s, (_, ms) in SYSTEMS.items() if m in ms and not (args.no_finetune and s == "finetune")]
               for m in models}
    started = time.perf_counter()
    print(f"train_speed: batch {BATCH_SIZE}, prompt length {PROMPT_LENGTH}, {warmup} warm-up + {steps} timed "
          f"steps per run, {rounds} round(s), torch threads {threads_note}")
    print("  texts: English SIB-200 train, one seeded order, the same batches for every system")
    if "xglm" in models:
        print(f"  xglm-564M-random: XGLMForCausalLM(config), random weights (torch.manual_seed(0)); {layers} of 24 "
              "layers, vocab 256008, d_model 1024, 16 heads, ffn 4096 (XGLM-564M's config)")
        print("  xglm tokenizer: multilingual-e5-small's (XLM-R SentencePiece, 250,002 pieces < 256,008) -- no "
              "XGLM tokenizer offline; label word 'politics' -> its first piece '▁politic' (as xlprompt's head "
              "does), the six others are one piece")
    if q:
        print(f"  quick mode reduced: XGLM layers 24 -> {layers} (full 256k vocabulary and width kept), timed "
              f"steps 20 -> {steps}, warm-up 2 -> {warmup}, rounds 3 -> {rounds}")
    print(f"  machine: {cores} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    log_path = os.path.join(tempfile.gettempdir(), f"xlprompt-train-speed-{os.getpid()}.log")
    results: dict = {m: {s: [] for s in systems[m]} for m in models}
    with open(log_path, "w") as log:
        for r in range(rounds):
            for m in models:
                for s in (systems[m] if r % 2 == 0 else systems[m][::-1]):  # alternate who goes first
                    spec = dict(model=m, system=s, steps=steps, warmup=warmup, layers=layers, threads=threads)
                    t0 = time.perf_counter()
                    res = run_system(spec, log)
                    res["round"], res["wall_seconds"] = r, time.perf_counter() - t0
                    results[m][s].append(res)
                    print(f"  round {r + 1}/{rounds} {m:4s} {s:15s} {res['examples_per_second']:7.3f} ex/s  "
                          f"memory {res['memory_mb']:6.0f} MB  (process {res['wall_seconds']:.0f} s, "
                          f"load {os.getloadavg()[0]:.1f})", flush=True)

    summary = {}
    for m in models:
        best = {}
        for s, runs in results[m].items():  # the fastest round; memory = the largest over rounds
            best[s] = {k: max(x[k] for x in runs) for k in
                       ("examples_per_second", "memory_mb", "process_peak_rss_mb", "rss_after_load_mb")}
            best[s]["trainable_parameters"] = runs[0]["trainable_parameters"]
        ref = best["peft"]
        for b in best.values():
            b["speed_vs_peft"] = b["examples_per_second"] / ref["examples_per_second"]
            b["memory_vs_peft"] = b["memory_mb"] / ref["memory_mb"]
        summary[m] = best
        print(f"\n{MODEL_NAMES[m]}" + (f", {layers} of 24 layers" if m == "xglm" else ""))
        print(f"  {'system':16s} {'ex/s':>7s} {'train peak MB':>14s} {'process peak MB':>16s} {'loaded MB':>10s} "
              f"{'trainable':>12s} {'speed':>6s} {'memory':>7s}")
        for s, b in best.items():
            print(f"  {s:16s} {b['examples_per_second']:7.3f} {b['memory_mb']:14.0f} {b['process_peak_rss_mb']:16.0f} "
                  f"{b['rss_after_load_mb']:10.0f} {b['trainable_parameters']:12,d} {b['speed_vs_peft']:5.2f}x "
                  f"{b['memory_vs_peft']:6.2f}x")
        for s, b in best.items():
            if s != "peft":
                print(f"{m}: speed {s} / peft = {b['speed_vs_peft']:.2f}x "
                      f"({b['examples_per_second']:.3f} vs {ref['examples_per_second']:.3f} examples/s)")
                print(f"{m}: memory {s} / peft = {b['memory_vs_peft']:.2f}x "
                      f"(peak {b['memory_mb']:.0f} vs {ref['memory_mb']:.0f} MB)")
        if m == "xglm":
            b = best["xlprompt"]
            met = b["speed_vs_peft"] >= 1.5 and b["memory_vs_peft"] <= 0.6
            print(f"xglm: target xlprompt >= 1.50x PEFT examples/s and <= 0.60x its peak memory: "
                  f"{'met' if met else 'NOT met'} ({layers} of 24 layers)")
    wall = time.perf_counter() - started
    print(f"\nwall time {wall:.0f} s; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"children's stderr: {log_path}")
    if args.out:
        write_json(args.out, {"settings": dict(steps=steps, warmup=warmup, rounds=rounds, layers=layers,
                                               threads=threads, batch_size=BATCH_SIZE,
                                               prompt_length=PROMPT_LENGTH, quick=q),
                              "summary": summary, "runs": results, "wall_seconds": wall})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
