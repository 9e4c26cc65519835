"""The interface every engine implements, and the work it is handed.

An engine runs the frozen backbone for a block of work: `prepared(model)` puts the backbone in the
engine's state for the block (int8 layers, an ONNX Runtime forward, autocast) and yields what preparing it
did, for the `speed` block; `outputs(model, encoded, work)` returns the model's output for every row.
Evaluation, prediction and serving ask the execution plan's engine (`engine_for(plan)`) and never test
an engine's name; adding an engine is its own module plus one `register_engine` line in engine/__init__.py.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Work:
    """What an engine runs: `forward(model, encoded, stats=..., description=...)` is the batched forward
    loop with its batching bound (evaluation.predict_outputs); the rest is what int8-checked's calibration
    reads (the run, its task, the token cache, the data folder)."""

    forward: Callable
    stats: dict = field(default_factory=dict)
    description: str = "evaluating"
    run: object = None
    task: object = None
    cache: object = None
    data_dir: str | None = None


class Engine:
    """PyTorch's forward as it is: the base every engine refines."""

    name = "torch"
    precisions: tuple[str, ...] = ("fp32",)  # what --precision values this engine runs
    reads_features = False  # a head-only run may be served from the pooled-feature cache instead
    auto_precision: str | None = None  # what --precision auto is on this engine, where it has its own rule

    def __init__(self, precision: str = "fp32"):
        self.precision = precision

    def prepared(self, model):
        """For the block, the backbone as this engine runs it; yields a dict for `speed.engine` (or None)."""
        return contextlib.nullcontext(None)

    def outputs(self, model, encoded, work: Work) -> tuple[list, dict | None]:
        """(the model's output for every row, what the engine reports for `speed.precision`)."""
        return work.forward(model, encoded, stats=work.stats, description=work.description), None

    def serve(self, backbone) -> None:
        """Set the engine up on a server's backbone for the server's lifetime (nothing by default)."""


_said: set[str] = set()


def notice(line: str) -> None:
    """One line on stderr, once per process per message."""
    if line not in _said:
        _said.add(line)
        print(f"xlprompt: {line}", file=sys.stderr, flush=True)
