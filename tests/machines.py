"""Faked CPU kinds for the execution plan: each one's flags and one layer's measured speed-ups over fp32.

The suite runs on whatever CPU CI or a developer has (AVX2 Zen 3, AVX-512 VNNI/BF16 Zen 4 and AMX Sapphire
Rapids have all been seen), and the plan's "auto" depends on the CPU. So no test measures: conftest puts
the AVX2 kind in place for every test (auto = fp32 everywhere, the numbers tests were written against),
and a test that is about another kind says so with `use_machine(monkeypatch, KIND)`. The speed-ups are
of the kinds seen (benchmarks/README.md), rounded.
"""
from __future__ import annotations

import torch

from xlprompt.execution import machine

KINDS = {
    # AMD EPYC Zen 3: no integer or bf16 matmul kernels in PyTorch (int8 a plain loop, bf16 converted)
    "avx2": ("AMD EPYC 7B13", ["avx2", "fma"], {"bf16": 0.45, "int8": 0.04}),
    # Intel Cascade Lake: VNNI int8 kernels, no bf16 instructions
    "vnni": ("Intel Xeon Platinum 8280", ["avx2", "avx512_vnni", "avx512f", "fma"], {"bf16": 0.5, "int8": 2.6}),
    # AMD EPYC Zen 4: VNNI and AVX-512 BF16
    "avx512-bf16": ("AMD EPYC 9R14", ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"],
                    {"bf16": 2.2, "int8": 2.6}),
    # Intel Sapphire Rapids: AMX tiles for bf16 and int8
    "amx": ("Intel Xeon Platinum 8488C", ["amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_bf16", "avx512_vnni",
                                          "avx512f", "fma"], {"bf16": 3.4, "int8": 2.8}),
}


REAL_MACHINE_SPEEDS = machine.machine_speeds  # before any test fakes it


def real_speedup(candidate: str) -> float:
    """This CPU's measured speed-up of `candidate` over fp32 (the real probe, for tests of real models)."""
    return REAL_MACHINE_SPEEDS()["speedup"].get(candidate) or 0.0


def fake_gpu(monkeypatch) -> None:
    """The plan resolves devices as on a machine with one CUDA GPU that has bf16."""
    from xlprompt.execution import plan

    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "auto": torch.bfloat16}
    monkeypatch.setattr(plan, "resolve_device", lambda spec="auto": torch.device("cuda", 0))
    monkeypatch.setattr(plan, "local_rank_device", lambda device: device)
    monkeypatch.setattr(plan, "resolve_dtype", lambda spec, where: names[(spec or "auto").lower()]
                        if isinstance(spec, (str, type(None))) else spec)


def profile(kind: str, **speedups) -> dict:
    """What `machine.machine_speeds` returns on a CPU of `kind` (speed-ups over fp32 may be overridden)."""
    model, flags, speed = KINDS[kind]
    speed = {"fp32": 1.0, **speed, **speedups}
    fp32 = 0.010
    identity = {"model": model, "flags": flags, "cores": 2, "torch": torch.__version__, "capability": "faked"}
    seconds = {k: [fp32 / v] * 3 for k, v in speed.items()}
    return {"key": f"fake-{kind}", "identity": identity, "shape": {"hidden": 384, "intermediate": 1536, "heads": 12},
            "rows": 32, "width": 64, "threads": 2, "seconds": seconds, **machine.summarize({"seconds": seconds}),
            "kind": machine.cpu_kind(identity), "source": "cache"}


def use_machine(monkeypatch, kind: str, **speedups) -> dict:
    found = profile(kind, **speedups)
    monkeypatch.setattr(machine, "machine_speeds", lambda *args, **kwargs: found)
    return found
