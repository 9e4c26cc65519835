"""Load test of `xlprompt serve`: throughput and latency with 1, 8 and 32 prompts, mixed vs single batching,
fp32 vs int8-checked.

    python benchmarks/serve_load.py --quick                 # a smoke check, a few minutes on 2 busy cores
    python benchmarks/serve_load.py --out serve_load.json   # the full run
    python benchmarks/serve_load.py --long 10000 --prompts 8 --texts 1   # memory over a long run

Run folders (real ones, loadable by `xlprompt evaluate`): one base run is trained (SIB-200 English, an input
prompt of 10, a few shots per class, 1 epoch); the other prompts are new run folders written by `Run.save`
with that run's trained head and freshly initialised random prompts (seeds 1..N-1) of several kinds and
lengths (input 1/5/10/20, deep 4/16), so batches mix prompt lengths and methods as a real server's would.
Prompt values do not change the cost of a forward pass; their kinds and lengths do.

One server per `--batchings` x `--precisions` pair (default: mixed and single, each in fp32, the baseline,
and int8-checked) runs as a child process on 127.0.0.1, each loaded with all prompts; only one is under
load at a time, in the same order for every prompt count. The table gives each server's texts/s against
the same batching in the first precision, and the share of its int8 rows it rechecked in fp32. For each prompt count P, `--concurrency` clients send
requests of `--texts` SIB-200 test sentences (8 languages) with a prompt drawn uniformly from the first P,
until `--requests` requests were sent or `--seconds` passed. Every measurement also reports the errors
(non-200 answers and failed connections) and the server's resident memory (VmRSS) and peak (VmHWM) after it.

`--long N`: one mixed server, N requests in slices of `--sample-every`, the server's memory after each
slice, to show whether it grows with the number of requests served (it should not). Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

import serve_abuse  # noqa: E402  (beside this script)

LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "zho_Hans", "arb_Arab", "hin_Deva", "swh_Latn", "rus_Cyrl"]
KINDS = [("input_prompt", 1), ("input_prompt", 5), ("input_prompt", 10), ("input_prompt", 20),
         ("deep_prompt", 4), ("deep_prompt", 16)]


def make_runs(root: Path, count: int, model: str, shots: int) -> dict[str, Path]:
    """`count` run folders under `root` (kept and reused when they are already there)."""
    from xlprompt import TrainConfig, fit
    from xlprompt.models.classifier import build_classifier
    from xlprompt.prompts.config import DeepPromptConfig, InputPromptConfig
    from xlprompt.runs.run import Run
    from xlprompt.tasks import get_task

    names = {f"p{i:02d}": root / f"p{i:02d}" for i in range(count)}
    if all((path / "run.json").exists() for path in names.values()):
        return names
    base_dir = names["p00"]
    if not (base_dir / "run.json").exists():
        started = time.perf_counter()
        config = TrainConfig(task="sib200", model=model, method=InputPromptConfig(prompt_length=10), shots=shots,
                             epochs=1, seed=0)
        base = fit(config, progress=False)
        base.save(base_dir)
        print(f"trained the base run {base_dir} in {time.perf_counter() - started:.0f}s", flush=True)
    base = Run.load(base_dir)
    task = get_task("sib200")
    for i, (name, path) in enumerate(names.items()):
        if i == 0 or (path / "run.json").exists():
            continue
        kind, length = KINDS[i % len(KINDS)]
        method = InputPromptConfig(prompt_length=length) if kind == "input_prompt" else DeepPromptConfig(prompt_length=length)
        config = TrainConfig(task="sib200", model=model, method=method, shots=shots, epochs=1, seed=i)
        model_i = build_classifier(config, task, backbone=base.model.backbone)
        model_i.head.load_state_dict(base.model.head.state_dict())
        Run(config=config, model=model_i, info={"note": f"random {kind} of length {length} (seed {i}) on the "
                                                        f"trained head of {base_dir}"}).save(path)
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(runs: dict[str, Path], batching: str, args, log, precision: str = "auto") -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "xlprompt.cli", "serve", "--port", str(port), "--batching", batching,
               "--precision", precision,
               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
               "--max-padding", str(args.max_padding), "--threads", str(args.threads), "--log-level", "warning"]
    for name, path in runs.items():
        command += ["--name", f"{name}={path}"]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, seconds: float = 300) -> None:
    """Until /health answers (int8-checked servers calibrate every prompt first: seconds per prompt)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see the log")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer within {seconds:.0f} s")


async def load(url: str, names: list[str], texts: list[str], args, seed: int) -> dict:
    """Closed loop: `concurrency` clients, each sending its next request when the last one is answered."""
    rng = random.Random(seed)
    plan = [(rng.choice(names), rng.sample(range(len(texts)), args.texts)) for _ in range(args.requests)]
    latencies, failures, next_request = [], {}, 0
    deadline = time.monotonic() + args.seconds
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def client_loop():
            nonlocal next_request
            while next_request < len(plan) and time.monotonic() < deadline:
                name, picked = plan[next_request]
                next_request += 1
                sent = time.perf_counter()
                try:
                    r = await client.post("/classify", json={"prompt": name, "texts": [texts[i] for i in picked]})
                    status = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failures[status] = failures.get(status, 0) + 1

        before = (await client.get("/health")).json()
        started = time.perf_counter()
        await asyncio.gather(*[client_loop() for _ in range(args.concurrency)])
        seconds = time.perf_counter() - started
        after = (await client.get("/health")).json()
    batches = after["batches"] - before["batches"]
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "texts": len(latencies) * args.texts, "seconds": seconds,
            "texts_per_second": len(latencies) * args.texts / seconds if seconds else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "batches": batches, "forward_passes": after["forward_passes"] - before["forward_passes"],
            "mean_batch": (after["texts"] - before["texts"]) / batches if batches else 0.0,
            "failures": failures, "errors": sum(failures.values()), "queued_after": after["queued_texts"],
            "precision": after.get("precision"),
            "rows": {k: v - before.get("rows", {}).get(k, 0) for k, v in after.get("rows", {}).items()}}


def server_memory(pid: int) -> dict:
    """The server process's resident memory now and its peak so far, in MB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


def long_run(process: subprocess.Popen, url: str, names: list[str], texts: list[str], args) -> dict:
    """`args.long` requests in slices; the server's memory after each slice."""
    samples, done, started = [], 0, time.perf_counter()
    while done < args.long:
        size = min(args.sample_every, args.long - done)
        part = asyncio.run(load(url, names, texts, argparse.Namespace(**{**vars(args), "requests": size,
                                                                            "seconds": 1e9}), seed=done))
        done += size
        samples.append({"requests": done, "seconds": time.perf_counter() - started, "errors": part["errors"],
                        "texts_per_second": part["texts_per_second"], "p50_ms": part["p50_ms"],
                        "p99_ms": part["p99_ms"], "queued_after": part["queued_after"],
                        **server_memory(process.pid)})
        s = samples[-1]
        print(f"{done:>6} requests · {s['texts_per_second']:.1f} texts/s · p99 {s['p99_ms'] or 0:.0f} ms · "
              f"RSS {s['rss_mb']:.0f} MB (peak {s['peak_rss_mb']:.0f}) · errors {s['errors']}", flush=True)
    first, last = samples[0], samples[-1]
    return {"requests": done, "errors": sum(s["errors"] for s in samples), "samples": samples,
            "rss_after_first_slice_mb": first["rss_mb"], "rss_at_end_mb": last["rss_mb"],
            "rss_growth_mb": last["rss_mb"] - first["rss_mb"], "peak_rss_mb": last["peak_rss_mb"],
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and seconds: a smoke check")
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--prompts", default="1,8,32", help="prompt counts to measure")
    parser.add_argument("--requests", type=int, help="requests per measurement (default 400, quick 48)")
    parser.add_argument("--seconds", type=float, help="time cap per measurement (default 120, quick 20)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once")
    parser.add_argument("--texts", type=int, default=4, help="texts per request")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-padding", type=float, default=0.1, help="the server's --max-padding")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--batchings", default="mixed,single", help="the servers' --batching values to compare")
    parser.add_argument("--precisions", default="fp32,int8-checked",
                        help="the servers' --precision values to compare (the first is the baseline)")
    parser.add_argument("--start-seconds", type=float, default=900, help="how long a server may take to start")
    parser.add_argument("--shots", type=int, default=8, help="shots per class of the trained base run")
    parser.add_argument("--runs-dir", type=Path, help="keep (and reuse) the run folders here")
    parser.add_argument("--out", type=Path, default=Path("serve_load.json"))
    parser.add_argument("--long", type=int, help="instead: N requests to one mixed server, its memory over time")
    parser.add_argument("--sample-every", type=int, default=500, help="--long: requests between memory samples")
    serve_abuse.add_arguments(parser)
    args = parser.parse_args()
    args.requests = args.requests or (48 if args.quick else 400)
    args.seconds = args.seconds or (20.0 if args.quick else 120.0)
    counts = [int(c) for c in args.prompts.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from xlprompt.execution.plan import slow_int8_reason

    if "int8-checked" in args.precisions.split(",") and slow_int8_reason():
        raise SystemExit(f"int8-checked would take minutes per prompt to calibrate here, and serve slower than fp32: "
                         f"{slow_int8_reason()}. Measure with --precisions fp32, or on a CPU with those kernels.")

    started = time.perf_counter()
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="xlprompt-serve-load-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = make_runs(root, max(counts), args.model, args.shots)
    from xlprompt.tasks import get_task

    sib = get_task("sib200")
    texts = [t for lang in LANGUAGES for t in sib.load("test", lang)["text"].tolist()]

    log_path = args.out.with_suffix(".log")
    if args.long:
        return long_main(runs, counts, texts, args, log_path, root, started)
    if args.slow_clients:
        return abuse_main(runs, texts, args, log_path, root, started)
    configs = [(b, p) for p in args.precisions.split(",") for b in args.batchings.split(",")]
    servers = {}
    with open(log_path, "w") as log:
        try:
            for batching, precision in configs:  # all load at once; only one is under load at a time
                servers[f"{batching} {precision}"] = start_server(runs, batching, args, log, precision)
            for label, (process, url) in servers.items():
                wait_ready(process, url, args.start_seconds)
                asyncio.run(load(url, list(runs)[:1], texts, argparse.Namespace(**{**vars(args), "requests": 8}), 0))
            results = []
            for count in counts:
                names = list(runs)[:count]
                row = {"prompts": count, "servers": {}}
                for label, (process, url) in servers.items():
                    m = row["servers"][label] = asyncio.run(load(url, names, texts, args, seed=count))
                    m["server"] = server_memory(process.pid)
                    print(f"{count} prompts, {label}: {m['texts_per_second']:.1f} texts/s, "
                          f"p99 {m['p99_ms'] or 0:.0f} ms", flush=True)
                results.append(row)
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)

    print_table(results)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": "p00 trained (sib200, input prompt 10, 1 epoch); others: its head with random prompts "
                      f"cycling {KINDS}",
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "seconds": time.perf_counter() - started, "results": results}
    from xlprompt.core.io import write_json

    write_json(args.out, report)
    print(f"wrote {args.out} · {report['seconds']:.0f}s · load average {os.getloadavg()[0]:.1f} · "
          f"server log {log_path}")
    if args.runs_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def long_main(runs, counts, texts, args, log_path, root, started) -> None:
    names = list(runs)[:max(counts)]
    with open(log_path, "w") as log:
        process, url = start_server({n: runs[n] for n in names}, "mixed", args, log)
        try:
            wait_ready(process, url)
            result = long_run(process, url, names, texts, args)
        finally:
            process.terminate()
            code = process.wait(60)
    print(f"{result['requests']} requests, {result['errors']} errors · RSS after the first "
          f"{args.sample_every}: {result['rss_after_first_slice_mb']:.0f} MB, at the end "
          f"{result['rss_at_end_mb']:.0f} MB (growth {result['rss_growth_mb']:+.1f} MB), peak "
          f"{result['peak_rss_mb']:.0f} MB · server exit code after SIGTERM {code}")
    from xlprompt.core.io import write_json

    write_json(args.out, {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "seconds": time.perf_counter() - started, "exit_code": code, "long": result})
    print(f"wrote {args.out} · server log {log_path}")
    if args.runs_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def abuse_main(runs, texts, args, log_path, root, started) -> None:
    names = list(runs)[:1]
    with open(log_path, "w") as log:
        process, url = start_server({n: runs[n] for n in names}, "mixed", args, log, "fp32")
        try:
            wait_ready(process, url, args.start_seconds)
            asyncio.run(load(url, names, texts, argparse.Namespace(**{**vars(args), "requests": 8}), 0))
            result = serve_abuse.abuse_run(url, names, texts, args, load)
        finally:
            process.terminate()
            process.wait(60)
    from xlprompt.core.io import write_json

    write_json(args.out, {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                          "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "seconds": time.perf_counter() - started, "abuse": result})
    print(f"wrote {args.out} · server log {log_path}")
    if args.runs_dir is None:
        shutil.rmtree(root, ignore_errors=True)


def print_table(results: list[dict]) -> None:
    """One line per prompt count and server; texts/s against the same batching's first precision (the
    baseline) and against the same precision's single batching."""
    head = (f"{'prompts':>7} | {'server':>20} | {'texts/s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | "
            f"{'mean batch':>10} | {'passes':>6} | {'requests':>8} | {'failed':>6} | {'rechecked':>9} | "
            f"{'RSS MB':>6} | {'peak MB':>7} | {'vs baseline':>11} | mixed/single")
    print(head)
    print("-" * len(head))
    for row in results:
        servers = row["servers"]
        first = {}
        for label in servers:
            first.setdefault(label.split()[0], label)
        for label, m in servers.items():
            batching, precision = label.split()
            base = servers[first[batching]]["texts_per_second"]
            single = servers.get(f"single {precision}", {}).get("texts_per_second")
            rows = m.get("rows", {})
            share = f"{rows['rechecked'] / rows['int8']:.1%}" if rows.get("int8") else "-"
            vs = f"{m['texts_per_second'] / base:.2f}x" if base else ""
            ms = f"{m['texts_per_second'] / single:.2f}x" if batching == "mixed" and single else ""
            print(f"{row['prompts']:>7} | {label:>20} | {m['texts_per_second']:>8.1f} | {m['p50_ms'] or 0:>8.0f} | "
                  f"{m['p99_ms'] or 0:>8.0f} | {m['mean_batch']:>10.1f} | {m['forward_passes']:>6} | "
                  f"{m['requests']:>8} | {m['errors']:>6} | {share:>9} | {m['server']['rss_mb']:>6.0f} | "
                  f"{m['server']['peak_rss_mb']:>7.0f} | {vs:>11} | {ms}")


if __name__ == "__main__":
    main()
