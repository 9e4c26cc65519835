"""Where and in which precision a run executes: `--device` and `--dtype`.

Both are execution settings, never part of a run: they are keyword arguments (fit, evaluate, load, serve,
sweep), not TrainConfig fields, so they never change a run id or a run folder, and a folder trained on a
GPU loads on a CPU and the reverse.

device: auto (CUDA if present, else Apple's MPS, else CPU) | cpu | cuda | cuda:N | mps.
dtype: the frozen backbone's weights. These are the primitives; what "auto" means is the execution plan's
decision (execution/plan.py): bf16 on a CUDA GPU that supports it; on a CPU, bf16 where the CPU has native
bf16 and bf16 weights measured fastest among the guarded recipes, else fp32. Prompts, heads and reparameterization
nets always keep fp32 master weights; a backbone that trains (--no-freeze, finetune) keeps fp32 weights
too and runs its forward pass under autocast in the chosen dtype (mixed precision). fp32 on a CUDA GPU
uses TF32 matmuls.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from ..core.errors import XlpromptError

DEVICES = "auto | cpu | cuda | cuda:N | mps"
DTYPES = ("auto", "fp32", "bf16", "fp16")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# evaluation's padded-token budget per batch: on CPU 1-4k tokens run best (benchmarks/README.md); a GPU
# needs tens of thousands to be busy (issue 12: 2,048-token batches took 5.8 s where 65,536 took 0.98 s)
CPU_MAX_TOKENS = 2048
GPU_MAX_TOKENS = 65536


def cuda_count() -> int:
    """GPUs this process sees (CUDA_VISIBLE_DEVICES applies); 0 without CUDA."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """A usable torch.device for `spec`, or an XlpromptError saying what to pass instead."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if cuda_count():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not mps_available():
            raise XlpromptError("--device mps needs Apple's Metal backend (macOS with torch built for MPS), which "
                                "this machine lacks: use --device cpu or --device auto.")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        count = cuda_count()
        if not count:
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise XlpromptError(f"--device {spec}: {why} (torch {torch.__version__}). Use --device cpu or auto, "
                                "or install a CUDA build of torch on a machine with an NVIDIA GPU.")
        if spec == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        index = spec[len("cuda:"):]
        if not index.isdigit() or int(index) >= count:
            raise XlpromptError(f"--device {spec}: this machine sees {count} GPU(s), cuda:0 to cuda:{count - 1}.")
        return torch.device("cuda", int(index))
    raise XlpromptError(f"Unknown device {spec!r}: use {DEVICES}.")


def resolve_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The backbone's dtype for `spec` on `device` (auto: bf16 on a CUDA GPU that supports it, else fp32)."""
    if isinstance(spec, torch.dtype):
        if spec not in _TORCH_DTYPES.values():
            raise XlpromptError(f"Unsupported dtype {spec}: use one of {', '.join(DTYPES)}.")
        return spec
    spec = (spec or "auto").strip().lower()
    if spec not in DTYPES:
        raise XlpromptError(f"Unknown dtype {spec!r}: use one of {', '.join(DTYPES)}.")
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if spec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise XlpromptError(f"{torch.cuda.get_device_name(device)} has no bf16: use --dtype fp16 or fp32.")
    return _TORCH_DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _TORCH_DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def configure(device: torch.device) -> None:
    """Process-wide speed settings for a device: TF32 matmuls and convolutions on CUDA (fp32 weights keep
    fp32 storage and accumulate in fp32; only the multiply inputs are rounded to 10 mantissa bits)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.set_device(device)


def to_device(batch, device: torch.device):
    """Move every tensor of a collated Batch to `device` in place; CUDA copies go from pinned host memory
    without blocking, so the next batch is collated while this one is copied. A CPU batch is untouched."""
    if device.type == "cpu":
        return batch
    cuda = device.type == "cuda"
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            if cuda:
                value = value.pin_memory()
            setattr(batch, name, value.to(device, non_blocking=cuda))
    return batch


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast for mixed precision (a trained fp32 backbone computing in bf16/fp16); a no-op for None/fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by torch on `device` since the last reset (MiB); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def device_info(device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """What a results file records about where it ran."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    info = {"device": str(device), "device_name": name}
    if dtype is not None:
        info["dtype"] = dtype_name(dtype)
    info["peak_gpu_memory_mb"] = peak_memory_mb(device)
    return info


def load_kwargs(dtype: torch.dtype, device: torch.device) -> dict:
    """from_pretrained keywords that load weights straight in `dtype` (and onto a CUDA device), never as a
    full fp32 copy in host memory first: transformers 5 always loads that way and names the keyword
    `dtype`; 4.x needs `low_cpu_mem_usage` and (before 4.56) `torch_dtype`."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kwargs = {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
    if major < 5:
        kwargs["low_cpu_mem_usage"] = True
    # straight onto the GPU; transformers 4.x needs accelerate for that (else the caller moves the model)
    if device.type == "cuda" and (major >= 5 or importlib.util.find_spec("accelerate") is not None):
        kwargs["device_map"] = {"": device.index if device.index is not None else 0}
    return kwargs


def local_rank_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK; CPU and MPS stay as they are."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
