"""What an ensemble of prompts and a per-language adaptation cost, on the offline default, in one process.

    python benchmarks/ensemble_adapt.py [--runs R1 R2 R3] [--languages 20] [--rounds 2] [--adapt swh_Latn,yor_Latn,quy_Latn]

1. Ensemble: the same languages' test sets scored by one run (`xlprompt.evaluate`, fp32, torch engine, as
   `xlprompt evaluate --precision fp32`) and by the ensemble of the three runs (`serving.ensemble`, fp32),
   alternating, best of --rounds rounds each; the ratio is ensemble seconds / one run's seconds.
2. Adapt: `xlprompt.adapt(R1, language, 8)` (8 examples per class, 10 epochs) per language, wall seconds
   including the load of the source run.

Defaults: three seeds of the findings' 32-per-class input prompt (docs/findings/store; frozen runs load
without a backbone file). Prints one JSON object; writes it to benchmarks/results/ensemble_adapt.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = [ROOT / "docs/findings/store/runs" / r for r in ("a0f5c736332e", "c0921620981d", "24e8f32983dc")]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    import torch

    import xlprompt
    from xlprompt.serving.ensemble import Ensemble, evaluate_ensemble
    from xlprompt.tasks import get_task

    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs=3, type=Path, default=RUNS)
    parser.add_argument("--languages", type=int, default=20)
    parser.add_argument("--adapt", default="swh_Latn,yor_Latn,quy_Latn")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    languages = get_task("sib200").languages()[:args.languages]
    single = xlprompt.load(args.runs[0], dtype="fp32")
    ensemble = Ensemble.from_runs(args.runs, precision="fp32", engine="torch", dtype="fp32")
    one, three = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        alone = xlprompt.evaluate(single, languages, precision="fp32", engine="torch", threads=2, progress=False,
                                  token_cache=False)
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        together = evaluate_ensemble(ensemble, languages)
        three.append(time.perf_counter() - t)
    adapt_seconds = {}
    for language in args.adapt.split(","):
        t = time.perf_counter()
        xlprompt.adapt(args.runs[0], language, 8, progress=False)
        adapt_seconds[language] = round(time.perf_counter() - t, 1)
    out = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": 2, "languages": len(languages),
           "sentences": together["speed"]["sentences"],
           "one_run_seconds": round(min(one), 2), "ensemble_of_3_seconds": round(min(three), 2),
           "ratio": round(min(three) / min(one), 2),
           "one_run_mean_accuracy": round(alone["mean"]["accuracy"], 4),
           "ensemble_mean_accuracy": round(together["mean"]["accuracy"], 4),
           "adapt_seconds_8_per_class": adapt_seconds}
    print(json.dumps(out, indent=1))
    from xlprompt.core import io

    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    io.write_json(ROOT / "benchmarks/results/ensemble_adapt.json", out)


if __name__ == "__main__":
    main()
