"""int8_token.py's quantize and rescale steps as a compiled extension (`int8_rows.cpp`), built once per machine.

Eager PyTorch spends about a third of an int8 forward pass on these elementwise steps (five passes over the
activation to quantize it, three over the product to rescale it); the extension does each in one pass,
vectorized for AVX-512 where the CPU has it, and gives the same bits as the eager ops.

It is built with `torch.utils.cpp_extension` (a C++ compiler and `ninja`) the first time int8 runs, into
xlprompt's cache (`kernels/`, or `$XLPROMPT_KERNEL_CACHE`), in a folder named by the source, torch's version
and this CPU's flags: about 30 s, once. Where it cannot be built (no compiler), or with `XLPROMPT_KERNELS=0`,
int8 runs the eager ops instead, and one line on stderr says so.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import torch

from .base import notice

SOURCE = Path(__file__).with_name("int8_rows.cpp")
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp"]  # no FMA: the eager ops' rounding


def kernel_dir() -> Path:
    from ..core.paths import cache_dir

    env = os.environ.get("XLPROMPT_KERNEL_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "kernels"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build_key() -> str:
    parts = [SOURCE.read_bytes(), torch.__version__.encode(), cpu_flags().encode(), " ".join(CFLAGS).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build():
    """The compiled module, or None (with the reason on stderr) where it cannot be built here."""
    if os.environ.get("XLPROMPT_KERNELS", "1") == "0":
        return None
    key = build_key()
    name, folder = f"xlprompt_int8_rows_{key}", kernel_dir() / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob(f"{name}*.so")):
            notice("building the int8 kernels for this machine (once, about 30 s)")
        from torch.utils.cpp_extension import load

        return load(name, [str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                    build_directory=str(folder), verbose=False)
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as exc:  # no compiler or ninja
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        notice(f"could not build the int8 kernels ({reason}); int8 runs PyTorch's slower eager ops "
               "(a C++ compiler and `pip install ninja` enable them)")
        return None
