"""What this machine is and how fast each way of running a frozen backbone is on it, measured once.

The CPUs xlprompt runs on differ in exactly the kernels its defaults depend on (issue 26): an AVX2-only
AMD Zen 3 has no integer or bf16 matmul kernels (PyTorch's int8 matmul ran 0.03x fp32 there); a Zen 4 has
AVX-512 VNNI and AVX-512 BF16; an Intel Sapphire Rapids adds AMX tiles, where bf16 weights ran 2.96x fp32
and int8-checked 1.95x. No rule written down on one of them is right on the others, so the choice is made
here, on the machine at hand, by timing one transformer layer at the backbone's shapes in each candidate's
arithmetic:

- fp32: `nn.Linear` layers, attention, LayerNorm and GELU in fp32;
- bf16: the same layer with its weights and activations in bf16 (what bf16 backbone weights run);
- int8: the layer's `nn.Linear`s as xlprompt's per-token int8 layers (engine/int8_token.py), the rest fp32.

Rounds are interleaved (fp32, bf16, int8, fp32, ...) after two warm-up rounds (the compiled int8 kernels are
built or loaded before any), and each candidate's median
is kept, so a burst of load from another job slows every candidate alike and one noisy round cannot move
the result. The answer is cached per CPU model, CPU flags, core count, torch version and layer shape in
`machine/` under xlprompt's cache folder (`$XLPROMPT_MACHINE_CACHE` to move it), written atomically; a
damaged or foreign file is a miss and is measured again. Tests replace `measure` with a fake.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

PROBE_RECIPE = 2  # bump when the probe's layer or workload changes: cached measurements then no longer apply
ROUNDS = 7
SLOW = 4.0  # a candidate whose warm-up round took this many times fp32's is not timed again
# the flags that decide which kernels PyTorch has for the candidates (recorded; the kind is named from them)
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                "amx_tile", "asimd", "bf16", "i8mm")


@dataclass(frozen=True)
class LayerShape:
    """One transformer layer of the backbone: what the probe times."""

    hidden: int
    intermediate: int
    heads: int

    @classmethod
    def of_config(cls, config) -> "LayerShape":
        hidden = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        inner = (getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
                 or getattr(config, "n_inner", None) or 4 * hidden)
        heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1)
        return cls(hidden, int(inner), heads if hidden % heads == 0 else 1)


DEFAULT_SHAPE = LayerShape(384, 1536, 12)  # the offline default, multilingual-e5-small


# ------------------------------------------------------------------------------------------- the CPU
@functools.lru_cache(maxsize=None)
def cpu_identity() -> dict:
    """The CPU's model name, the kernel-relevant flags it has, the cores this process may use, and the
    torch build: everything a measurement depends on, and so its cache key."""
    from .inference import available_cores

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == (platform.processor() or platform.machine()):
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: no flags, the probe still measures
        pass
    return {"model": name, "flags": sorted(flags & set(KERNEL_FLAGS)), "cores": available_cores(),
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def cpu_kind(identity: dict) -> str:
    """A name for the kind of CPU, for reasons and notes: amx | avx512-bf16 | vnni | avx2 | arm-bf16 | other."""
    flags = set(identity.get("flags", ()))
    if "amx_bf16" in flags or "amx_int8" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return "arm-bf16" if "bf16" in flags else "other"


def native_bf16(identity: dict) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX, AVX-512 BF16, Arm's BF16): elsewhere bf16 matmuls
    are converted to fp32 and back, slower than fp32 itself, so bf16 weights are never a candidate there."""
    return bool({"amx_bf16", "avx512_bf16", "bf16"} & set(identity.get("flags", ())))


# ----------------------------------------------------------------------------------------- the probe
class ProbeLayer(nn.Module):
    """An encoder layer in plain torch ops (attention, feed-forward, two LayerNorms) at a given shape."""

    def __init__(self, shape: LayerShape, generator: torch.Generator):
        super().__init__()
        h, i = shape.hidden, shape.intermediate
        self.heads = shape.heads
        self.qkv, self.out = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.up, self.down = nn.Linear(h, i), nn.Linear(i, h)
        self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, h)
        x = self.norm1(x + self.out(attended))
        return self.norm2(x + self.down(nn.functional.gelu(self.up(x))))


def probe_rows(shape: LayerShape, width: int = 64, budget_flops: float = 4e9) -> int:
    """Rows of `width` tokens: about the CPU token budget (2,048) for small models, fewer for large ones
    so one fp32 round stays near `budget_flops` (a few tens of milliseconds on two cores)."""
    per_token = 2 * (4 * shape.hidden ** 2 + 2 * shape.hidden * shape.intermediate)
    return max(1, min(32, int(budget_flops // (per_token * width))))


def candidate_layers(shape: LayerShape, candidates) -> dict:
    from ..engine.int8_token import linear_swaps

    base = ProbeLayer(shape, torch.Generator().manual_seed(0)).eval()
    layers = {}
    for name in candidates:
        if name == "fp32":
            layers[name] = (base, torch.float32)
        elif name == "bf16":
            layers[name] = (copy.deepcopy(base).to(torch.bfloat16), torch.bfloat16)
        elif name == "int8":
            layer = copy.deepcopy(base)
            for parent, attr, _, int8 in linear_swaps(layer):
                setattr(parent, attr, int8)
            layers[name] = (layer, torch.float32)
        else:
            raise ValueError(f"unknown probe candidate {name!r}")
    return layers


@torch.inference_mode()
def measure(shape: LayerShape, candidates=("fp32", "bf16", "int8"), rounds: int = ROUNDS) -> dict:
    """Seconds of one layer's forward per candidate and round (interleaved, after two warm-up rounds), on
    the torch thread count in force."""
    layers = candidate_layers(shape, candidates)
    if "int8" in layers:  # the compiled quantize/rescale kernels: built (once per machine) or loaded, untimed
        from ..engine.int8_token import fused_kernels

        fused_kernels()
    rows, width = probe_rows(shape), 64
    x = torch.randn(rows, width, shape.hidden, generator=torch.Generator().manual_seed(1))
    inputs = {name: x.to(dtype) for name, (_, dtype) in layers.items()}
    seconds: dict[str, list[float]] = {name: [] for name in layers}
    warmup: dict[str, float] = {}
    for r in range(rounds + 2):
        for name, (layer, _) in layers.items():
            if r > 1 and warmup[name] > SLOW * warmup["fp32"]:
                continue  # a plain loop (int8 without integer kernels: 25-60x fp32): once is enough
            start = time.perf_counter()
            layer(inputs[name])
            took = time.perf_counter() - start
            if r > 1:
                seconds[name].append(took)
            elif r == 1:  # round 0 pays for allocations and kernel selection; round 1 is the first real one
                warmup[name] = took
    for name, values in seconds.items():
        if not values:
            values.append(warmup[name])
    return {"rows": rows, "width": width, "threads": torch.get_num_threads(), "seconds": seconds}


def summarize(measured: dict) -> dict:
    """Median seconds per candidate and each one's speed-up over fp32."""
    medians = {name: statistics.median(values) for name, values in measured["seconds"].items()}
    fp32 = medians.get("fp32")
    return {"median_seconds": medians,
            "speedup": {name: (fp32 / s if fp32 and s else None) for name, s in medians.items()}}


# ----------------------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    from ..core.paths import cache_dir as root

    env = os.environ.get("XLPROMPT_MACHINE_CACHE")
    return Path(env).expanduser() if env else root() / "machine"


def cache_key(identity: dict, shape: LayerShape, candidates) -> str:
    blob = json.dumps({"recipe": PROBE_RECIPE, "identity": identity, "shape": dataclasses.asdict(shape),
                       "candidates": sorted(candidates)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def read_cached(key: str) -> dict | None:
    from ..core import io

    found = io.read_cache_entry(cache_dir() / f"{key}.json")  # None: measure again
    ok = (found is not None and found.get("key") == key and isinstance(found.get("seconds"), dict)
          and all(isinstance(v, list) and v and all(isinstance(s, (int, float)) and s > 0 for s in v)
                  for v in found["seconds"].values()))
    return found if ok else None


def write_cached(key: str, found: dict) -> None:
    from ..core import io

    io.write_cache_entry(cache_dir() / f"{key}.json", found)  # read-only: the probe again next process


_MEASURED: dict[str, dict] = {}


def machine_speeds(shape: LayerShape = DEFAULT_SHAPE, candidates=("fp32", "bf16", "int8"),
                   fresh: bool = False) -> dict:
    """This CPU's measured speeds for `shape`: from this process's memory, else the cache, else `measure`
    (then cached); `fresh` measures again and replaces the cached answer (`xlprompt plan --remeasure`,
    e.g. after a measurement made while other jobs loaded the cores).
    {"identity", "kind", "shape", "seconds", "median_seconds", "speedup", "source", ...}."""
    identity = cpu_identity()
    key = cache_key(identity, shape, candidates)
    if key in _MEASURED and not fresh:
        return _MEASURED[key]
    found = None if fresh else read_cached(key)
    source = "cache"
    if found is None:
        found = {"key": key, "identity": identity, "shape": dataclasses.asdict(shape), **measure(shape, candidates)}
        found["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_cached(key, found)
        source = "measured"
    result = {**found, **summarize(found), "kind": cpu_kind(identity), "source": source}
    _MEASURED[key] = result
    return result
