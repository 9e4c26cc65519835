"""Zero-shot evaluation speed on SIB-200: the old fixed policy vs each speed-up alone and all together.

Every configuration evaluates a real run folder (a 10-token input prompt on the offline default model;
`--run DIR`, or one is trained quickly first) in its own child process, so peak memory and caches are
its own. Each child also measures this machine's fp32 matmul FLOP/s at the model's shapes, with the
thread count the configuration ended up using; model FLOP utilisation = achieved model FLOP/s / that.

    python benchmarks/eval_speed.py --quick                  # 10 languages, every configuration (~10 min)
    python benchmarks/eval_speed.py --run RUN --out eval_speed.json
        # configurations on a 16-language sample, then fp32 and int8 (all speed-ups) on all 205 languages
    python benchmarks/eval_speed.py --run RUN --engines torch-fp32,onnx-fp32,onnx-int8 --guard onnx-int8
        # engines on the same batches (engine_compare.py), then the accuracy guard over all 205 languages

See benchmarks/README.md for what each column means and the measured table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import engine_compare  # benchmarks/engine_compare.py
from isolated import print_result, rss_mb, run_child  # benchmarks/isolated.py, beside this script

QUICK_LANGS = ["eng_Latn", "deu_Latn", "rus_Cyrl", "zho_Hans", "hin_Deva", "arb_Arab", "swh_Latn", "yor_Latn",
               "tam_Taml", "khm_Khmr"]
# name -> evaluate() settings; "cache" is replaced by the warmed token-cache folder
CONFIGS = {
    "baseline": dict(batch_size=64, max_tokens=None, token_cache=False, threads=None, precision="fp32"),
    "+cache": dict(batch_size=64, max_tokens=None, token_cache="cache", threads=None, precision="fp32"),
    "+budget": dict(batch_size=None, max_tokens="default", token_cache=False, threads=None, precision="fp32"),
    "+threads": dict(batch_size=64, max_tokens=None, token_cache=False, threads="auto", precision="fp32"),
    "+int8": dict(batch_size=64, max_tokens=None, token_cache=False, threads=None, precision="int8"),
    "all fp32": dict(batch_size=None, max_tokens="default", token_cache="cache", threads="auto", precision="fp32"),
    "all int8": dict(batch_size=None, max_tokens="default", token_cache="cache", threads="auto", precision="int8"),
}
BUDGETS = [1024, 2048, 4096, 8192, 16384]


# ----------------------------------------------------------------------------------------------- child
def linear_shapes(model) -> list[tuple[int, int]]:
    """(in, out) of every per-token Linear of the transformer body (the pooler reads one token per row)."""
    from torch import nn

    return [(m.in_features, m.out_features) for n, m in model.backbone.body.named_modules()
            if isinstance(m, nn.Linear) and "pooler" not in n]


def matmul_gflops(shapes: list[tuple[int, int]], rows: int = 4096, seconds: float = 0.6) -> float:
    """fp32 F.linear at the model's distinct layer shapes, `rows` tokens at once; best of 3 windows."""
    import torch
    import torch.nn.functional as F

    distinct = sorted(set(shapes))
    xs = {i: torch.randn(rows, i) for i, _ in distinct}
    ws = {(i, o): torch.randn(o, i) for i, o in distinct}
    flops = sum(2 * rows * i * o for i, o in distinct)
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            for i, o in distinct:
                F.linear(xs[i], ws[(i, o)])
            n += 1
        best = max(best, n * flops / (time.perf_counter() - start) / 1e9)
    return best


def sample_lengths(task, tokenizer, langs, max_length, cache_root) -> list[int]:
    from xlprompt.data.token_cache import TokenCache

    cache = TokenCache(cache_root)
    return [len(ids) for c in langs for ids in cache.encode(task, tokenizer, task.load("test", c, None),
                                                            max_length).token_ids]


def child(spec: dict) -> dict:
    import torch

    from xlprompt.evaluation.evaluate import DEFAULT_MAX_TOKENS, evaluate
    from xlprompt.runs.run import Run
    from xlprompt.tasks import get_task

    t0 = time.perf_counter()
    run = Run.load(spec["run"])
    load_seconds = time.perf_counter() - t0
    shapes = linear_shapes(run.model)
    task = get_task(run.config.task)
    out = {"name": spec["name"], "load_model_seconds": load_seconds, "load_average_start": os.getloadavg()[0],
           "rss_loaded_mb": rss_mb("VmRSS"), "torch_default_threads": torch.get_num_threads()}
    with open("/proc/self/clear_refs", "w") as fh:  # peak from here on = evaluation, not the model build
        fh.write("5")
    if spec["mode"] == "engines":
        return {**out, **engine_compare.child(spec)}
    if spec["mode"] == "budgets":
        return {**out, **budget_sweep(run, task, spec)}
    kwargs = dict(spec["settings"])
    if kwargs["token_cache"] == "cache":
        kwargs["token_cache"] = spec["cache"]
    if kwargs["max_tokens"] == "default":
        kwargs["max_tokens"] = DEFAULT_MAX_TOKENS
    results = evaluate(run, spec["langs"], progress=False, **kwargs)
    speed = results["speed"]
    threads = speed["threads"]["final"]
    torch.set_num_threads(threads)
    gflops = matmul_gflops(shapes)
    lengths = sample_lengths(task, run.model.backbone.tokenizer, spec["langs"], run.config.max_length, spec["cache"])
    n_slots, d, layers = run.model.num_slots, run.model.backbone.hidden_size, run.model.backbone.num_layers
    per_token = 2 * sum(i * o for i, o in shapes)
    flops = sum(per_token * (n + n_slots) + 4 * layers * d * (n + n_slots) ** 2 for n in lengths)
    forward = speed["seconds"]["forward"]
    return {**out, "results": {c: m["accuracy"] for c, m in results["languages"].items()},
            "mean_accuracy": results["mean"]["accuracy"], "speed": speed, "matmul_gflops": gflops,
            "model_flops": flops, "model_gflops_per_second": flops / forward / 1e9,
            "mfu": flops / forward / 1e9 / gflops, "flops_per_token_linear": per_token,
            "eval_peak_rss_mb": rss_mb("VmHWM"), "load_average_end": os.getloadavg()[0]}


def budget_sweep(run, task, spec) -> dict:
    """Batching policies, split into the two things they decide. Padding: exact, from the lengths of
    every language pooled (as evaluate() pools them). Cost per padded token: forward passes over an
    evenly spaced subset of those rows (every k-th by length, so batch shapes match the full set), same
    threads for all, rounds in alternating order; the best round counts. Real tokens/s = padded tokens/s x
    (1 - padding share)."""
    import torch

    from xlprompt.data.collate import Encoded, length_sorted_batches
    from xlprompt.evaluation.evaluate import predict_outputs
    from xlprompt.execution.inference import thread_candidates
    from xlprompt.data.token_cache import TokenCache

    cache = TokenCache(spec["cache"])
    enc = Encoded.concat([cache.encode(task, run.model.backbone.tokenizer, task.load("test", c, None),
                                       run.config.max_length) for c in spec["langs"]])
    lengths = [n + run.model.num_slots + 1 for n in enc.lengths()]
    order = sorted(range(len(enc)), key=lambda i: lengths[i])
    rows = order[::max(1, len(order) // spec["rows"])]
    subset = Encoded([enc.token_ids[i] for i in rows], [enc.labels[i] for i in rows])
    threads = thread_candidates()[1]
    torch.set_num_threads(threads)
    policies = [("64 rows", 64, None)] + [(f"{b} tokens", None, b) for b in BUDGETS]
    runs: dict = {name: [] for name, _, _ in policies}
    predict_outputs(run.model, Encoded(subset.token_ids[:64], subset.labels[:64]), 64, None)  # one-off setup
    for r in range(spec["rounds"]):
        for name, size, budget in (policies if r % 2 == 0 else policies[::-1]):
            stats: dict = {}
            predict_outputs(run.model, subset, size, budget, stats=stats)
            runs[name].append(stats["padded_tokens"] / stats["forward"])
    summary = {}
    for name, size, budget in policies:
        batches = length_sorted_batches(lengths, size or len(lengths), budget)
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        share = 1 - sum(lengths) / padded
        summary[name] = {"padded_tokens_per_second": max(runs[name]), "rounds": runs[name], "batches": len(batches),
                         "padding_share": share, "tokens_per_second": max(runs[name]) * (1 - share)}
    return {"threads": threads, "rows_measured": len(rows), "rows_all": len(enc), "budgets": summary,
            "eval_peak_rss_mb": rss_mb("VmHWM")}


# ---------------------------------------------------------------------------------------------- parent
def run_configuration(spec: dict, log) -> dict:
    result, peak = run_child(__file__, spec, log, spec["name"])
    result["process_peak_rss_mb"] = peak
    return result


def train_quick_run(folder: str, log) -> str:
    """A real run folder in ~1 minute: 10-token prompt + head, 8 sentences per class, 2 epochs."""
    code = ("import sys; from xlprompt import TrainConfig, InputPromptConfig, fit; "
            "fit(TrainConfig(method=InputPromptConfig(prompt_length=10), shots=8, epochs=2), progress=False).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, folder], check=True, stderr=log)
    return folder


def warm_cache(run_dir: str, cache: str, langs: list[str]) -> dict:
    """Tokenize every language once into `cache` (the miss the cached configurations then skip) and
    return token counts as the model sees them (text + prompt slots) for extrapolating to 205 languages."""
    from transformers import AutoTokenizer

    from xlprompt.core import io
    from xlprompt.runs.config import TrainConfig
    from xlprompt.models.backbone import resolve_model_source
    from xlprompt.tasks import get_task
    from xlprompt.data.token_cache import TokenCache

    config = TrainConfig.from_dict(io.read_json(os.path.join(run_dir, "config.json")))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(config.model)[0], local_files_only=True)
    task, tc = get_task(config.task), TokenCache(cache)
    slots = getattr(config.method, "prompt_length", 0)
    start, counts = time.perf_counter(), {}
    for code in langs:
        enc = tc.encode(task, tokenizer, task.load("test", code, None), config.max_length)
        counts[code] = {"sentences": len(enc), "tokens": sum(len(t) + slots for t in enc.token_ids)}
    return {"seconds": time.perf_counter() - start, "counts": counts, "stats": tc.stats}


def minutes_for_all(res: dict, counts: dict, langs: list[str]) -> tuple[float, bool]:
    """Measured when the configuration ran every language; else its per-token and per-sentence times
    scaled to all languages (an estimate)."""
    total = res["speed"]["seconds"]["total"]
    if len(langs) == len(counts):
        return total / 60, True
    sec = res["speed"]["seconds"]
    tok_ratio = sum(c["tokens"] for c in counts.values()) / sum(counts[c]["tokens"] for c in langs)
    sent_ratio = sum(c["sentences"] for c in counts.values()) / sum(counts[c]["sentences"] for c in langs)
    per_token = sec["collate"] + sec["forward"]
    return (per_token * tok_ratio + (total - per_token) * sent_ratio) / 60, False


def compare_results(paths: list[str]) -> list[str]:
    """Whole `xlprompt evaluate` runs side by side: the first file is the reference. Each row's speed is its
    own run's (forward tokens/s, end-to-end minutes), so the runs should share a machine and a load."""
    from xlprompt.engine.guard import accuracy_guard

    results = []
    for path in paths:
        with open(path) as fh:
            results.append(json.load(fh))
    ref = {c: m["accuracy"] for c, m in results[0]["languages"].items()}
    base = results[0]["speed"]["tokens_per_second"]
    lines = [f"{'weights, precision / engine':26s} {'tok/s':>7s} {'vs ref':>7s} {'forward min':>11s} {'total min':>9s} "
             f"{'mean acc':>8s} {'Δmean pt':>8s} {'worst pt':>8s}  worst language  rechecked"]
    guards = []
    for path, r in zip(paths, results):
        s = r["speed"]
        acc = {c: m["accuracy"] for c, m in r["languages"].items()}
        g = accuracy_guard(ref, acc)
        recheck = s["precision"].get("recheck")
        name = f"{s.get('dtype', 'fp32')} w. {s['precision']['used']} / {s['engine']['used']}"
        lines.append(f"{name:26s} {s['tokens_per_second']:7.0f} {s['tokens_per_second'] / base:6.2f}x "
                     f"{s['seconds']['forward'] / 60:11.2f} {s['seconds']['total'] / 60:9.2f} "
                     f"{r['mean']['accuracy']:8.4f} {g.mean_delta:+8.2f} {g.worst_delta:+8.2f}  {g.worst_language:15s} "
                     f"{'-' if not recheck else format(recheck['rechecked_share'], '.1%')}")
        if path != paths[0]:
            guards.append(g.line(name, "the first file"))
    return lines + guards + [f"({len(ref)} languages; files: {', '.join(paths)})"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="run folder to evaluate (default: train a quick one)")
    ap.add_argument("--quick", action="store_true", help="10 languages for every configuration, no full runs")
    ap.add_argument("--sample", type=int, default=16, help="languages in the comparison sample (default 16)")
    ap.add_argument("--langs", help="comma list: the comparison sample instead (smoke tests)")
    ap.add_argument("--full", default="all fp32,all int8", help="configurations also run on all languages ('' for none)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="configurations compared on the sample")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the batching-policy sweep")
    ap.add_argument("--budget-rows", type=int, default=800, help="rows timed per batching policy")
    ap.add_argument("--only-budgets", action="store_true", help="run the batching-policy sweep alone")
    ap.add_argument("--engines", help="compare these engines on the sample instead (engine_compare.ENGINE_NAMES)")
    ap.add_argument("--guard", help="engines to check over all languages against torch-fp32 (the accuracy guard)")
    ap.add_argument("--reference", help="per-language torch fp32 results (xlprompt evaluate --out) for --guard")
    ap.add_argument("--threads", type=int, default=1, help="threads for --engines/--guard (default 1)")
    ap.add_argument("--chunks", type=int, default=8, help="--guard: language chunks, each saved when done")
    ap.add_argument("--summarize-partial", help="print the tables and guard of a (stopped) --guard's .partial.jsonl")
    ap.add_argument("--compare", nargs="+", metavar="RESULTS.json",
                    help="results of `xlprompt evaluate --out` on the same languages, the first the reference "
                         "(fp32 torch): one table of speed and accuracy change, and the accuracy guard")
    ap.add_argument("--out", help="write every measurement as JSON (atomic)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print_result(child(json.loads(args.child)))
        return
    if args.summarize_partial:
        engine_compare.summarize_partial(args.summarize_partial, args.reference)
        return
    if args.compare:
        print("\n".join(compare_results(args.compare)))
        return

    from xlprompt.core.io import write_json
    from xlprompt.tasks import get_task

    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="xlprompt-eval-speed-")
    log_path = os.path.join(work, "children.log")
    log = open(log_path, "w")
    print(f"eval_speed: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start, "
          f"{len(os.sched_getaffinity(0))} cores; scratch {work}", flush=True)
    run_dir = args.run or train_quick_run(os.path.join(work, "run"), log)
    everything = get_task("sib200").languages(None)
    sample = QUICK_LANGS if args.quick else everything[::max(1, len(everything) // args.sample)][:args.sample]
    sample = args.langs.split(",") if args.langs else sample
    cache = os.path.join(work, "tokens")
    warm = warm_cache(run_dir, cache, everything)
    counts = warm["counts"]
    print(f"  run {run_dir}; token cache warmed for {len(everything)} languages in {warm['seconds']:.1f}s "
          f"({sum(c['tokens'] for c in counts.values()):,} tokens incl. prompt slots, "
          f"{sum(c['sentences'] for c in counts.values()):,} sentences)", flush=True)
    print(f"  sample ({len(sample)}): {','.join(sample)}", flush=True)

    if args.engines or args.guard:
        measured = engine_compare.run_engines(args, run_dir, cache, counts, sample, everything,
                                              lambda spec: run_configuration(spec, log))
        wall = time.perf_counter() - started
        print(f"\nwall time {wall / 60:.1f} min; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"children's stderr: {log_path}")
        if args.out:
            write_json(args.out, {"run": run_dir, "sample": sample, "warm_cache": warm, **measured,
                                  "wall_seconds": wall})
            print(f"wrote {args.out}")
        return

    budgets = run_configuration({"name": "budgets", "mode": "budgets", "run": run_dir, "langs": everything, "cache": cache,
                         "rounds": args.rounds, "rows": args.budget_rows}, log)
    print(f"  batching policies: padding over all {budgets['rows_all']:,} rows; cost per padded token from "
          f"{budgets['rows_measured']} evenly spaced rows, {budgets['threads']} thread(s), best of {args.rounds} rounds:")
    for name, b in budgets["budgets"].items():
        print(f"    {name:13s} {b['batches']:5d} batches  padding {100 * b['padding_share']:5.2f}%  "
              f"{b['padded_tokens_per_second']:6.0f} padded tok/s  -> {b['tokens_per_second']:6.0f} tok/s", flush=True)

    plan = [] if args.only_budgets else [(name, sample) for name in args.configs.split(",") if name]
    if not args.quick and not args.only_budgets:
        plan += [(name, everything) for name in args.full.split(",") if name]
    results = []
    for name, langs in plan:
        spec = {"name": name, "mode": "evaluate", "run": run_dir, "langs": langs, "cache": cache,
                "settings": CONFIGS[name]}
        res = run_configuration(spec, log)
        res["languages"], res["minutes_all"], res["measured_all"] = langs, *minutes_for_all(res, counts, langs)
        results.append(res)
        s = res["speed"]
        print(f"  {name:9s} {len(langs):3d} langs  {s['tokens_per_second']:6.0f} tok/s  {s['seconds']['total']:7.1f}s  "
              f"threads {s['threads']['final']}  acc {res['mean_accuracy']:.4f}  load {res['load_average_end']:.1f}",
              flush=True)

    base = {tuple(r["languages"]): r for r in results if r["name"] == "baseline"}
    ref = base.get(tuple(sample))
    print(f"\n{'configuration':13s} {'langs':>5s} {'sent/s':>7s} {'tok/s':>7s} {'speed':>6s} {'min/205':>9s} "
          f"{'MFU':>5s} {'matmul GF/s':>11s} {'pad%':>5s} {'tokenize s':>10s} {'collate s':>9s} {'forward s':>9s} "
          f"{'thr':>3s} {'peak MB':>7s} {'acc':>6s} {'Δacc':>6s}")
    for r in results:
        s, sec = r["speed"], r["speed"]["seconds"]
        same = ref if r["languages"] == sample else None
        speedup = f"{s['tokens_per_second'] / same['speed']['tokens_per_second']:.2f}x" if same else "-"
        end_to_end = f"{same['speed']['seconds']['total'] / sec['total']:.2f}x" if same else "-"
        delta = f"{100 * (r['mean_accuracy'] - same['mean_accuracy']):+.2f}" if same else "-"
        r["vs_baseline"] = {"model_speed": speedup, "end_to_end": end_to_end, "accuracy_points": delta}
        minutes = f"{r['minutes_all']:.1f}" + ("" if r["measured_all"] else " est")
        print(f"{r['name']:13s} {len(r['languages']):5d} {s['sentences'] / sec['total']:7.1f} "
              f"{s['tokens_per_second']:7.0f} {end_to_end:>6s} {minutes:>9s} {r['mfu']:5.2f} {r['matmul_gflops']:11.0f} "
              f"{100 * s['padding_share']:5.1f} {sec['tokenize']:10.2f} {sec['collate']:9.2f} {sec['forward']:9.1f} "
              f"{s['threads']['final']:3d} {r['eval_peak_rss_mb']:7.0f} {r['mean_accuracy']:6.4f} {delta:>6s}")
    full = {r["name"]: r for r in results if r["languages"] == everything}
    if "all fp32" in full and "all int8" in full:
        a, b = full["all fp32"], full["all int8"]
        diffs = [b["results"][c] - a["results"][c] for c in everything]
        print(f"\nint8 vs fp32 over {len(everything)} languages: mean accuracy {a['mean_accuracy']:.4f} -> "
              f"{b['mean_accuracy']:.4f} ({100 * (b['mean_accuracy'] - a['mean_accuracy']):+.2f} points); "
              f"worst language {100 * min(diffs):+.1f}, best {100 * max(diffs):+.1f}; "
              f"default int8 needs >= -0.50")
    wall = time.perf_counter() - started
    print(f"\nwall time {wall / 60:.1f} min; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"children's stderr: {log_path}")
    if args.out:
        write_json(args.out, {"run": run_dir, "sample": sample, "quick": args.quick, "warm_cache": warm,
                              "budgets": budgets, "results": results, "wall_seconds": wall,
                              "load_average_end": os.getloadavg()})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
