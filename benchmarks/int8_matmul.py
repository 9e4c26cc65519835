"""int8 matmul kernels on this CPU against fp32, at e5-small's linear shapes: is int8 worth it here?

    python benchmarks/int8_matmul.py               # 1 thread, 2560 rows (a batch of 64 x 40 tokens)
    python benchmarks/int8_matmul.py --threads 2 --rows 4096

For each shape (in x out), best of `--repeats` after a warm-up, in the same process:
- fp32: `nn.Linear`, the baseline;
- int_mm: what xlprompt's int8 layers run (`engine/int8_token.py`: per-token quantize, `torch._int_mm`,
  rescale), fast only where oneDNN has integer kernels (AVX-512 VNNI, AVX-VNNI, AMX); a plain loop on
  AVX2-only CPUs, so it is skipped there unless `--slow`;
- fbgemm: `torch.ao` dynamic int8 (FBGEMM, AVX2 kernels; 7-bit activations on x86) on rows divided by their
  own max |x| first, so it is per-token too; not used by xlprompt, measured as a possible AVX2 path.
Each int8 row also gives its mean relative error against fp32 (max |y - y_fp32| / max |y_fp32| per row)
and the execution plan's measurement on this machine (`xlprompt.execution.machine_speeds`: one layer in
fp32, bf16 and int8), the numbers `--precision auto` decides by.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch import nn

SHAPES = [(384, 1536), (1536, 384), (384, 384)]


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fbgemm_per_token(linear: nn.Linear):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    bare = nn.Linear(linear.in_features, linear.out_features, bias=False)
    bare.weight.data.copy_(linear.weight.data)
    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(nn.Sequential(bare), {nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8)[0]

    def forward(x):
        scale = x.abs().amax(1, keepdim=True).clamp(min=1e-12)
        return quantized(x / scale).mul_(scale).add_(linear.bias)
    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=2560)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow", action="store_true", help="time int_mm even where it is a plain loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from xlprompt.engine.int8_token import TokenInt8Linear
    from xlprompt.execution import machine_speeds

    measured = machine_speeds()
    speedup = measured["speedup"].get("int8") or 0.0
    print(f"one layer vs fp32 ({measured['kind']} CPU, {measured['source']}): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in measured["speedup"].items() if v) + " · "
          f"torch {torch.__version__} · CPU capability {torch.backends.cpu.get_cpu_capability()} · "
          f"{args.threads} thread(s), {args.rows} rows")
    print(f"{'shape':>11} | {'kernel':>7} | {'ms':>8} | {'GOP/s':>7} | {'vs fp32':>7} | {'rel err':>7}")
    generator = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        x = torch.randn(args.rows, k, generator=generator) * torch.rand(args.rows, 1, generator=generator) * 4
        linear = nn.Linear(k, n)
        kernels = {"fp32": linear, "fbgemm": fbgemm_per_token(linear)}
        if speedup >= 0.5 or args.slow:
            kernels["int_mm"] = TokenInt8Linear(linear)
        with torch.no_grad():
            reference = linear(x)
            base = None
            for name, fn in kernels.items():
                seconds = best(lambda: fn(x), args.repeats)
                base = base or seconds
                error = ((fn(x) - reference).abs().amax(1) / reference.abs().amax(1)).mean().item()
                print(f"{k:>5}x{n:<5} | {name:>7} | {seconds * 1e3:>8.1f} | {2 * args.rows * k * n / seconds / 1e9:>7.0f} | "
                      f"{base / seconds:>6.2f}x | {error:>7.4f}")
        if "int_mm" not in kernels:
            print(f"{k:>5}x{n:<5} |  int_mm | skipped: a plain loop here (--slow to time it)")


if __name__ == "__main__":
    main()
