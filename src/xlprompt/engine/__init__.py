"""Which engine runs the frozen backbone at inference: PyTorch (fp32, bf16 weights, autocast, int8), int8
with fp32 rechecks (checked.py), or ONNX Runtime (`pip install 'xlprompt[onnx]'`).

Every engine implements base.Engine and is registered here once; `engine_for(plan)` is how evaluation,
prediction and serving get the one an execution plan names (execution/plan.py). `resolve_engine` turns
a requested engine (auto | torch | onnx) into the one used, with the reason; `engine_context` puts an ONNX
Runtime forward in place of the backbone's PyTorch one for a block (and restores it). Training never uses
it. When ONNX Runtime is missing, every path falls back to PyTorch and says so in one line on stderr (once
per process) and in the `speed` block.

`auto` follows the measurement in benchmarks/README.md (`eval_speed.py --engines`): an engine/precision
becomes the default only if it passes the accuracy guard (engine/guard.py) over all 205 SIB-200 languages
and is faster.
"""
from __future__ import annotations

import contextlib
import importlib.util

from ..core.errors import XlpromptError
from .base import Engine, notice
from .checked import CheckedEngine
from .torch_engine import TorchEngine
# What "auto" picks on CPU for a frozen encoder backbone, and the int8 recipe --precision int8 uses on ONNX.
AUTO_ENGINE = "torch"
AUTO_WHY = ("auto: torch (ONNX Runtime fp32 measured 1.01x PyTorch, and its int8 lost 1.96 points, on 8 SIB-200 "
            "languages; benchmarks/README.md)")
INT8_RECIPE = "int8"

def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


class OnnxEngine(Engine):
    """The frozen backbone on ONNX Runtime (runtime.py), fp32 or its dynamic int8."""

    name = "onnx"
    precisions = ("fp32", "int8")
    auto_precision = "fp32"  # int8 only if a recipe passed the accuracy guard: none has on ONNX

    def prepared(self, model):
        return onnx_backbone(model, self.precision)

    def serve(self, backbone) -> None:
        onnx = onnx_engine(backbone, self.precision)
        onnx.prepare(deep=False)  # deep prompts' graph: on the first deep-prompt batch
        backbone.forward = onnx.forward


# engines by the name --engine takes; precisions that are engines of their own (they run their own passes)
_ENGINES: dict[str, type[Engine]] = {}
_PRECISION_ENGINES: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine], by_precision: bool = False) -> type[Engine]:
    (_PRECISION_ENGINES if by_precision else _ENGINES)[cls.name] = cls
    return cls


register_engine(TorchEngine)
register_engine(OnnxEngine)
register_engine(CheckedEngine, by_precision=True)
ENGINES = ("auto", *_ENGINES)


def engine_class(name: str) -> type[Engine]:
    return _ENGINES[check_engine(name) if name != "auto" else AUTO_ENGINE]


def engine_for(plan) -> Engine:
    """The engine that runs a resolved plan's precision on its engine."""
    cls = _PRECISION_ENGINES.get(plan.precision) or _ENGINES[plan.engine]
    return cls(plan.precision)


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise XlpromptError(f"Unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
    return engine


def resolve_engine(engine: str, backbone, device, precision: str, trained_backbone: bool = False,
                   weights=None) -> tuple[str, str]:
    """(engine used, why) for a resolved precision over `weights` (the backbone's dtype; None = fp32). An
    explicit `onnx` that cannot run here falls back to torch with one line; settings that ONNX never takes
    (GPU, trained weights, bf16 weights or autocast) are errors."""
    import torch

    check_engine(engine)
    fp32_weights = weights in (None, torch.float32)
    if engine == "torch":
        return "torch", "requested"
    if engine == "auto":
        if AUTO_ENGINE != "onnx" or device.type != "cpu" or trained_backbone or precision not in ("fp32", "int8") \
                or not fp32_weights or backbone.kind != "encoder" or not onnx_available():
            return "torch", AUTO_WHY if AUTO_ENGINE == "torch" else "auto: torch (ONNX engine not usable here)"
        return "onnx", "auto: onnx (measured faster at the same accuracy; benchmarks/README.md)"
    if device.type != "cpu":
        raise XlpromptError("The ONNX engine runs on CPU: use --engine torch on a GPU.")
    if trained_backbone:
        raise XlpromptError("This run trained the backbone; the ONNX engine exports the shared frozen model only: "
                            "use --engine torch.")
    if not fp32_weights:
        raise XlpromptError("The ONNX engine exports fp32 weights: use --dtype fp32 with --engine onnx.")
    if precision not in ("fp32", "int8", "int8-checked"):  # int8-checked on ONNX: evaluation says it runs fp32
        raise XlpromptError(f"The ONNX engine runs fp32 or int8, not {precision}: use --engine torch for it.")
    if backbone.kind != "encoder":
        line = f"the ONNX engine exports encoder backbones only; {backbone.name} is a decoder: using torch"
        notice(line)
        return "torch", line
    if not onnx_available():
        line = "onnxruntime is not installed (pip install 'xlprompt[onnx]'): using the torch engine"
        notice(line)
        return "torch", line
    return "onnx", "requested"


def onnx_engine(backbone, precision: str, root=None):
    from .runtime import OnnxBackbone

    return OnnxBackbone(backbone, precision, INT8_RECIPE, root)


@contextlib.contextmanager
def engine_context(backbone, onnx):
    """Within the block, `backbone(...)` runs `onnx.forward` (an OnnxBackbone); PyTorch's forward is back after."""
    backbone.forward = onnx.forward  # an instance attribute shadows the class's forward for nn.Module.__call__
    try:
        yield onnx
    finally:
        del backbone.forward


def auto_precision(engine_used: str) -> str | None:
    """What --precision auto is on an engine that has its own rule (ONNX: fp32), else None."""
    return _ENGINES[engine_used].auto_precision


@contextlib.contextmanager
def onnx_backbone(model, precision: str, root=None):
    """For the block, the model's backbone runs on ONNX Runtime; yields what preparing it did (export or
    cache hit, seconds) for the `speed` block. The graph the model's prompt needs is opened up front."""
    onnx = onnx_engine(model.backbone, precision, root)
    info = onnx.prepare(deep=model.method is not None and model.method.config.enters == "prefix")
    with engine_context(model.backbone, onnx):
        yield {**info, "recipe": INT8_RECIPE if precision == "int8" else None}
