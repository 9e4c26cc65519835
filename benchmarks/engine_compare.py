"""Engines side by side on the same batches: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 recipes.

Used by `eval_speed.py --engines ...` (speed and accuracy on a language sample) and `--guard ...` (the
accuracy guard over every language). One child process loads the run once and opens every engine; then,
batch by batch (the batches `xlprompt evaluate` makes: all languages pooled, length-sorted, 2048-token
budget), each engine runs the same batch, in an order that rotates from batch to batch. Whatever else the
machine is doing therefore slows every engine alike, and the tokens/s ratios are what is compared.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time

ENGINE_NAMES = {  # name -> (engine, precision, int8 recipe)
    "torch-fp32": ("torch", "fp32", None),
    "torch-int8": ("torch", "int8", "per-tensor"),       # torch.ao dynamic: one activation scale per tensor
    "torch-int8-token": ("torch", "int8", "per-token"),  # engine/int8_token.py: one scale per token
    "torch-int8-token-ffn-out-fp32": ("torch", "int8", "per-token-ffn-out-fp32"),  # ... FFN output proj. fp32
    "onnx-fp32": ("onnx", "fp32", None),
    "onnx-int8": ("onnx", "int8", "int8"),
    "onnx-int8-ffn-out-fp32": ("onnx", "int8", "int8-ffn-out-fp32"),
    "onnx-int8-last2-fp32": ("onnx", "int8", "int8-last2-fp32"),
    "onnx-int8-ffn-attn-out-fp32": ("onnx", "int8", "int8-ffn-attn-out-fp32"),
}


def child(spec: dict) -> dict:
    """Load the run and every engine once; then, chunk by chunk of languages (`spec["chunks"]`, each pooled
    and batched as `xlprompt evaluate` batches), run every batch on every engine. After each chunk one JSON
    line with its per-language accuracies and seconds goes to `spec["partial"]`, so a stopped run still
    leaves every finished chunk behind."""
    import torch

    from xlprompt.runs.run import Run
    from xlprompt.tasks import get_task
    from xlprompt.data.token_cache import TokenCache

    torch.set_num_threads(spec["threads"])
    run = Run.load(spec["run"])
    model = run.model.eval()
    task = get_task(run.config.task)
    cache = TokenCache(spec["cache"])
    engines, prepare = open_engines(model, spec["engines"])
    langs = spec["langs"]
    n_chunks = max(1, min(spec.get("chunks", 1), len(langs)))
    totals = {"tokens": 0, "batches": 0, "sentences": 0}
    seconds = {n: 0.0 for n in engines}
    accuracy: dict = {n: {} for n in engines}
    for k in range(n_chunks):
        chunk = langs[k::n_chunks]  # spread over the alphabet, so any finished prefix of chunks is a fair sample
        part = run_chunk(model, task, cache, run.config.max_length, chunk, engines)
        for key in totals:
            totals[key] += part[key]
        for name in engines:
            seconds[name] += part["seconds"][name]
            accuracy[name].update(part["accuracy"][name])
        if spec.get("partial"):
            with open(spec["partial"], "a") as fh:
                fh.write(json.dumps({"chunk": k, "languages": chunk, "total_tokens": spec.get("total_tokens"),
                                     **part}) + "\n")
        print(f"chunk {k + 1}/{n_chunks}: {len(chunk)} languages, {part['tokens']} tokens, "
              + ", ".join(f"{n} {part['tokens'] / part['seconds'][n]:.0f} tok/s" for n in engines),
              file=sys.stderr, flush=True)
    out = {**totals, "threads": spec["threads"], "prepare": prepare, "engines": {},
           "load_average_end": os.getloadavg()[0]}
    for name in engines:
        out["engines"][name] = {"seconds": seconds[name], "tokens_per_second": totals["tokens"] / seconds[name],
                                "accuracy": accuracy[name],
                                "mean_accuracy": sum(accuracy[name].values()) / len(accuracy[name])}
    return out


def open_engines(model, names: list[str]) -> tuple[dict, dict]:
    """name -> None (PyTorch fp32), a list of layer swaps (PyTorch int8) or an OnnxBackbone; and what
    preparing each cost (export or cache hit)."""
    from xlprompt.engine.runtime import OnnxBackbone

    engines, prepare = {}, {}
    for name in names:
        kind, precision, recipe = ENGINE_NAMES[name]
        started = time.perf_counter()
        if kind == "onnx":
            engines[name] = OnnxBackbone(model.backbone, precision, recipe or "int8")
            info = engines[name].prepare(deep=hasattr(model.method, "prefix_tensor"))
            prepare[name] = {**info, "seconds": time.perf_counter() - started}
        elif recipe is not None:  # torch int8: the int8 layers are made once and swapped in per batch
            engines[name] = torch_int8_swaps(model.backbone.body, recipe)
            prepare[name] = {"cache": "none", "seconds": time.perf_counter() - started}
        else:
            engines[name] = None
    return engines, prepare


def run_chunk(model, task, cache, max_length: int, langs: list[str], engines: dict) -> dict:
    import torch

    from xlprompt.data.collate import Encoded, length_sorted_batches
    from xlprompt.engine import engine_context
    from xlprompt.engine.int8_token import swapped
    from xlprompt.evaluation.evaluate import DEFAULT_MAX_TOKENS, trim_output

    frames = {c: task.load("test", c, None) for c in langs}
    encoded = {c: cache.encode(task, model.backbone.tokenizer, frames[c], max_length) for c in langs}
    pooled = Encoded.concat([encoded[c] for c in langs])
    lengths = [n + model.num_slots + 1 for n in pooled.lengths()]
    batches = length_sorted_batches(lengths, len(pooled), DEFAULT_MAX_TOKENS)
    collate = model.collator()
    names = list(engines)
    seconds = {n: 0.0 for n in names}
    outputs = {n: [None] * len(pooled) for n in names}
    tokens = 0
    with torch.inference_mode():
        for b, rows in enumerate(batches):
            batch = collate(pooled, rows)
            tokens += int(batch.attention_mask.sum())
            for k in range(len(names)):
                name = names[(b + k) % len(names)]  # the order rotates from batch to batch
                engine = engines[name]
                start = time.perf_counter()
                if engine is None:
                    logits = model(batch)
                elif isinstance(engine, list):
                    with swapped(engine):
                        logits = model(batch)
                else:
                    with engine_context(model.backbone, engine):
                        logits = model(batch)
                result = logits.float().numpy()
                seconds[name] += time.perf_counter() - start
                for r, row in enumerate(rows):
                    outputs[name][row] = trim_output(result[r], len(pooled.token_ids[row]), result.ndim)
    accuracy = {}
    for name in names:
        per_language, start = {}, 0
        for code in langs:
            n = len(encoded[code])
            per_language[code] = task.score(frames[code], encoded[code], outputs[name][start:start + n])["accuracy"]
            start += n
        accuracy[name] = per_language
    return {"tokens": tokens, "batches": len(batches), "sentences": len(pooled), "seconds": seconds,
            "accuracy": accuracy}


def torch_int8_swaps(body, recipe: str) -> list:
    from torch import nn

    from xlprompt.engine.int8_token import linear_swaps
    from xlprompt.engine.torch_engine import _quantize_linear

    ffn_out = re.compile(r"layer\.\d+\.output\.dense$")  # BERT/XLM-R: the projection after GELU
    swaps = linear_swaps(body, keep=ffn_out.search if recipe.endswith("ffn-out-fp32") else None)
    if recipe == "per-tensor":
        swaps = [(parent, attr, fp32, _quantize_linear(fp32)) for parent, attr, fp32, _ in swaps]
    assert all(type(fp32) is nn.Linear for _, _, fp32, _ in swaps)
    return swaps


def report(result: dict, total_tokens: int, reference: dict | None, title: str) -> list[str]:
    """The table: engine, tokens/s, ratio to torch-fp32, forward-only minutes for all languages' tokens,
    accuracy and its change against the reference (torch-fp32 of this run, or the given per-language file)."""
    from xlprompt.engine.guard import accuracy_guard

    engines = result["engines"]
    base = engines.get("torch-fp32")
    ref = reference or (base["accuracy"] if base else None)
    lines = [title, f"{'engine':28s} {'tok/s':>7s} {'vs torch':>8s} {'min/205 fwd':>11s} {'acc':>7s} "
                    f"{'Δmean pt':>8s} {'worst pt':>8s}  worst language"]
    for name, e in engines.items():
        ratio = f"{e['tokens_per_second'] / base['tokens_per_second']:.2f}x" if base else "-"
        minutes = total_tokens / e["tokens_per_second"] / 60
        if ref is not None and set(ref) == set(e["accuracy"]):
            g = accuracy_guard(ref, e["accuracy"])
            delta, worst, where = f"{g.mean_delta:+.2f}", f"{g.worst_delta:+.2f}", g.worst_language
        else:
            delta = worst = where = "-"
        lines.append(f"{name:28s} {e['tokens_per_second']:7.0f} {ratio:>8s} {minutes:11.1f} "
                     f"{e['mean_accuracy']:7.4f} {delta:>8s} {worst:>8s}  {where}")
    return lines


def guard_lines(result: dict, reference: dict | None) -> list[str]:
    from xlprompt.engine.guard import accuracy_guard

    base = result["engines"].get("torch-fp32")
    ref = reference or (base["accuracy"] if base else None)
    if ref is None:
        return ["accuracy guard: no torch-fp32 reference (run torch-fp32 too, or pass --reference)"]
    return [accuracy_guard(ref, e["accuracy"]).line(name) for name, e in result["engines"].items()
            if name != "torch-fp32" and set(e["accuracy"]) == set(ref)]


def read_reference(path: str) -> dict:
    """Per-language accuracy from an `xlprompt evaluate --engine torch --out FILE.json` result."""
    import json

    with open(path) as fh:
        data = json.load(fh)
    return {code: m["accuracy"] for code, m in data["languages"].items()}


def run_engines(args, run_dir: str, cache: str, counts: dict, sample: list[str], everything: list[str],
                run_configuration) -> dict:
    """Parent side of --engines / --guard: print the tables and the guard check; return what was measured."""
    total_tokens = sum(c["tokens"] for c in counts.values())
    reference = read_reference(args.reference) if args.reference else None
    out = {"threads": args.threads, "total_tokens": total_tokens}
    if args.engines:
        spec = {"name": "engines", "mode": "engines", "run": run_dir, "langs": sample, "cache": cache,
                "engines": args.engines.split(","), "threads": args.threads}
        out["sample"] = res = run_configuration(spec)
        title = (f"\nengines on {len(sample)} languages ({res['sentences']} sentences, {res['tokens']:,} tokens, "
                 f"{res['batches']} batches, {args.threads} thread(s), interleaved batch by batch; min/205 fwd = "
                 f"forward time for all {total_tokens:,} tokens at this rate):")
        print("\n".join(report(res, total_tokens, None, title)), flush=True)
        for name, p in res["prepare"].items():
            print(f"  {name}: graph {p['cache']} in {p['seconds']:.1f}s", flush=True)
    if args.guard:
        engines = args.guard.split(",")
        if reference is None and "torch-fp32" not in engines:
            engines = ["torch-fp32"] + engines
        spec = {"name": "guard", "mode": "engines", "run": run_dir, "langs": everything, "cache": cache,
                "engines": engines, "threads": args.threads, "chunks": args.chunks,
                "partial": (args.out or "eval_speed.json") + ".partial.jsonl", "total_tokens": total_tokens}
        print(f"guard: {', '.join(engines)} on {len(everything)} languages in {args.chunks} chunks; finished "
              f"chunks go to {spec['partial']} (summarise a stopped run with --summarize-partial)", flush=True)
        out["guard"] = res = run_configuration(spec)
        ref_name = f"the reference {args.reference}" if reference else "torch-fp32 of this run"
        title = f"\nall {len(everything)} languages, accuracy against {ref_name}:"
        print("\n".join(report(res, total_tokens, reference, title)), flush=True)
        lines = guard_lines(res, reference)
        out["guard_lines"] = lines
        print("\n".join(lines), flush=True)
    return out


def summarize_partial(path: str, reference_path: str | None) -> None:
    """The tables and guard lines of the chunks a --guard run finished (all of them, or the ones before it stopped)."""
    chunks = [json.loads(line) for line in open(path) if line.strip()]
    engines: dict = {}
    tokens = 0
    for part in chunks:
        tokens += part["tokens"]
        for name, secs in part["seconds"].items():
            e = engines.setdefault(name, {"seconds": 0.0, "accuracy": {}})
            e["seconds"] += secs
            e["accuracy"].update(part["accuracy"][name])
    for e in engines.values():
        e["tokens_per_second"] = tokens / e["seconds"]
        e["mean_accuracy"] = sum(e["accuracy"].values()) / len(e["accuracy"])
    langs = sorted(next(iter(engines.values()))["accuracy"])
    reference = None
    if reference_path:
        full = read_reference(reference_path)
        reference = {c: full[c] for c in langs}
    result = {"engines": engines}
    title = f"{len(chunks)} chunks finished: {len(langs)} languages, {tokens:,} tokens"
    print("\n".join(report(result, chunks[0]["total_tokens"], reference, title)))
    print("\n".join(guard_lines(result, reference)))
