"""Every CPU recipe of the execution plan on the same run and languages, in one process: which one is fastest
here, and what each costs in accuracy against fp32.

    python benchmarks/plan_compare.py --run RUN [--threads 2] [--rounds 2] [--out plan_compare.json]

Settings (each through the product's own API, `xlprompt.load` + `xlprompt.evaluate`):
- fp32: fp32 weights, precision fp32 (the reference);
- bf16-autocast: fp32 weights under `torch.autocast(bf16)`;
- bf16-weights: the frozen backbone cast to bf16 (prompt and head fp32), precision fp32;
- int8: per-token int8 linears; int8-checked: int8 with close calls rechecked in fp32;
- auto: what `xlprompt evaluate` does with no flags on this machine (the plan's choice; printed).
The 16 languages are the issue's (3,264 sentences). Rounds alternate the order of the settings; a
setting's speed is its best round's forward seconds against fp32's (the same sentences for every
setting: tokens/s would count int8-checked's rechecked rows twice), and its accuracy columns compare each
language with fp32 of the same run. The CPU's model and flags head the
output: numbers from one CPU kind say nothing about another.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

LANGS = ("eng_Latn,deu_Latn,fra_Latn,rus_Cyrl,zho_Hans,jpn_Jpan,arb_Arab,hin_Deva,swh_Latn,yor_Latn,tur_Latn,"
         "vie_Latn,amh_Ethi,quy_Latn,hau_Latn,fin_Latn")
SETTINGS = {  # name -> (load dtype, evaluate precision)
    "fp32": ("fp32", "fp32"),
    "bf16-autocast": ("fp32", "bf16"),
    "bf16-weights": ("bf16", "fp32"),
    "int8": ("fp32", "int8"),
    "int8-checked": ("fp32", "int8-checked"),
    "auto": ("auto", "auto"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--langs", default=LANGS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="plan_compare.json")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.simplefilter("ignore")
    import xlprompt
    from xlprompt.execution import machine_speeds

    m = machine_speeds()
    ident = m["identity"]
    print(f"CPU {ident['model']} · {m['kind']} · flags {' '.join(ident['flags'])} · {ident['cores']} cores · "
          f"torch {ident['torch']} · {args.threads} threads · probe: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in m["speedup"].items() if v), flush=True)
    names = args.settings.split(",")
    runs = {name: xlprompt.load(args.run, dtype=SETTINGS[name][0]) for name in names}
    # tokenize once before the timed rounds (int8-checked's calibration is outside its forward time)
    xlprompt.evaluate(runs[names[0]], args.langs, progress=False, threads=args.threads, precision="fp32")
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            res = xlprompt.evaluate(runs[name], args.langs, progress=False, threads=args.threads,
                                    precision=SETTINGS[name][1])
            forward = res["speed"]["seconds"]["forward"]
            print(f"  round {r + 1} {name:<14} forward {forward:6.1f}s", flush=True)
            if name not in best or forward < best[name]["speed"]["seconds"]["forward"]:
                best[name] = res
    ref = best.get("fp32")
    rows = []
    tokens = ref["speed"]["tokens"]
    print(f"\n{'setting':<14} {'forward s':>9} {'tok/s':>8} {'vs fp32':>8} {'mean acc':>9} {'Δmean pt':>9} "
          f"{'worst pt':>9}  worst language  ran as")
    for name in names:
        res = best[name]
        seconds = res["speed"]["seconds"]["forward"]
        tps = tokens / seconds  # the sentences' own tokens, once
        deltas = {c: 100 * (m_["accuracy"] - ref["languages"][c]["accuracy"]) for c, m_ in res["languages"].items()}
        worst = min(deltas, key=deltas.get)
        plan = res["speed"]["plan"]
        ran = f"{plan['dtype']} weights, {res['speed']['precision']['used']}"
        rows.append({"setting": name, "forward_seconds": seconds, "tokens_per_second": tps,
                     "vs_fp32": ref["speed"]["seconds"]["forward"] / seconds,
                     "mean_accuracy": res["mean"]["accuracy"], "delta_mean": sum(deltas.values()) / len(deltas),
                     "worst_delta": deltas[worst], "worst_language": worst, "ran_as": ran, "plan": plan})
        r_ = rows[-1]
        print(f"{name:<14} {seconds:>9.1f} {tps:>8.0f} {r_['vs_fp32']:>7.2f}x {r_['mean_accuracy']:>9.4f} {r_['delta_mean']:>+9.2f} "
              f"{r_['worst_delta']:>+9.2f}  {worst:<14} {ran}")
    with open(args.out, "w") as fh:
        json.dump({"cpu": m, "threads": args.threads, "langs": args.langs, "rows": rows}, fh, indent=1, default=str)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
