"""What serving knows about one run before and after it is loaded: names, the servability checks, the
precision rule, and the prediction a row becomes. `multi.PromptBank` holds the loaded runs."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import io
from ..data.collate import Collator, encode_texts
from ..runs.config import TrainConfig
from ..core.errors import XlpromptError
from ..models.backbone import Backbone

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass
class Prediction:
    label_index: int
    label: str
    scores: list[float]   # softmax over the run's labels, in label order
    logits: list[float]


@dataclass(eq=False)  # compared by identity: a re-added name is a different run
class ServedRun:
    """One loaded run and what a mixed forward pass needs to know about it."""

    name: str
    path: Path
    run: object  # xlprompt.runs.run.Run, loaded onto the bank's backbone
    label_names: tuple[str, ...]
    takes_pairs: bool  # each example is two texts (the run's task says so; fixed when the run is added)
    collator: Collator = field(repr=False)
    # a fast tokenizer keeps truncation settings as state between calls, so runs with different max_length
    # tokenizing at once would truncate by each other's length: the bank gives each max_length its own copy
    # of the tokenizer (`PromptBank.reader`), and its lock, so requests never wait on another length's
    # tokenization or on a prompt being added; None: the backbone's own tokenizer
    tokenizer: object = field(default=None, repr=False)
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # int8-checked: rows whose int8 margin is below this run again in fp32; None = this run's rows run fp32
    recheck_threshold: float | None = None

    @property
    def model(self):
        return self.run.model

    @property
    def method_name(self) -> str:
        return self.run.config.method.type

    @property
    def prefix_length(self) -> int:
        return self.model.method.config.prompt_length if self.enters == "prefix" else 0

    @property
    def prompt_length(self) -> int:
        return self.run.config.method.prompt_length if self.enters is not None else 0

    @property
    def enters(self) -> str | None:
        """How the run's method enters the model (the method says: "input", "prefix" or None)."""
        return self.run.config.method.enters

    def info(self) -> dict:
        config = self.run.config
        return {"name": self.name, "path": str(self.path), "task": config.task, "pairs": self.takes_pairs,
                "labels": list(self.label_names), "method": self.method_name,
                "prompt_length": self.prompt_length, "model": config.model, "max_length": config.max_length}

    def encode(self, texts: list[str], text_pairs: list[str] | None = None) -> list[list[int]]:
        """Token ids as this run reads them (its tokenizer settings and its own max_length)."""
        if self.takes_pairs != (text_pairs is not None):
            need = "needs text_pairs (one second text per text)" if self.takes_pairs else \
                "takes single texts, not text_pairs"
            raise XlpromptError(f"Prompt {self.name!r} is a {self.run.config.task} run: it {need}.")
        tokenizer = self.tokenizer if self.tokenizer is not None else self.model.backbone.tokenizer
        with self.tokenizer_lock:
            return encode_texts(tokenizer, texts, [0] * len(texts), self.run.config.max_length, text_pairs).token_ids


class DuplicateName(XlpromptError):
    """A prompt of that name is already loaded."""


class InUse(XlpromptError):
    """The prompt is a member of an ensemble."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 100 or not set(name) <= NAME_CHARS:
        raise XlpromptError(f"Prompt name {name!r} is not usable: use 1-100 letters, digits, '.', '_' or '-'.")
    return name


def check_max_padding(value: float) -> None:
    if not 0 <= value <= 1:
        raise XlpromptError(f"max_padding (--max-padding) is a fraction of a pass's positions in [0, 1], got {value}.")


def read_servable_config(run_dir: Path) -> TrainConfig:
    """The run's config, after the checks that need no model: a prompt that can share a frozen backbone."""
    from ..tasks.custom import get_task_for

    if not (run_dir / "run.json").exists():
        hint = "it is still being written or training crashed" if run_dir.is_dir() else "it does not exist"
        raise XlpromptError(f"{run_dir} is not a complete xlprompt run folder ({hint}).")
    try:
        config = TrainConfig.from_dict(io.read_json(run_dir / "config.json"))
    except XlpromptError as exc:
        raise XlpromptError(f"{run_dir}/config.json: {exc}") from None
    except Exception as exc:  # missing, truncated, or values of the wrong type
        raise XlpromptError(f"{run_dir}/config.json cannot be read ({type(exc).__name__}: {exc}): the run folder "
                            "is damaged.") from exc
    if not config.freeze_model or config.method.trains_backbone:
        raise XlpromptError(f"{run_dir} trained the model's own weights ({config.method.type}, freeze_model="
                            f"{config.freeze_model}): its model differs from the shared frozen one, so it cannot "
                            "be served beside other prompts. Evaluate it alone with `xlprompt evaluate`.")
    head = get_task_for(config).head
    if head != "classification":
        raise XlpromptError(f"{run_dir} is a {config.task} run ({head} head): serving takes sentence and "
                            "sentence-pair classification runs only.")
    return config


SERVING_PRECISIONS = ("auto", "fp32", "int8-checked")


def check_serving_precision(precision: str) -> str:
    if precision not in SERVING_PRECISIONS:
        raise XlpromptError(f"Unknown serving precision {precision!r}: use one of {', '.join(SERVING_PRECISIONS)}.")
    return precision


def serving_plan(precision: str, backbone: Backbone, device: torch.device, engine: str, plan=None):
    """The execution plan a bank serves by (execution/plan.py): auto is int8-checked where the plan picks it
    for a frozen fp32 backbone on this CPU, else fp32 (bf16 weights serve as fp32 over bf16); an explicit
    int8-checked that cannot run here is an error."""
    from ..engine import engine_class
    from ..execution import resolve

    check_serving_precision(precision)
    blocker = ("it runs on CPU only" if device.type != "cpu" else
               f"the {engine} engine serves fp32" if "int8-checked" not in engine_class(engine).precisions else
               "the backbone is not fp32" if backbone.dtype != torch.float32 else None)
    if precision == "int8-checked" and blocker:
        raise XlpromptError(f"--precision int8-checked cannot serve here: {blocker}. Use --precision fp32.")
    plan = plan or resolve(device, None, precision, engine, threads=None, backbone=backbone, purpose="serve")
    if plan.precision not in ("fp32", "int8-checked"):
        plan = plan.replace(precision="fp32", why={"precision": f"{plan.why('precision')}; serving runs fp32"})
    return plan


def serving_precision(precision: str, backbone: Backbone, device: torch.device, engine: str) -> tuple[str, str]:
    """(precision used, why) of `serving_plan`."""
    plan = serving_plan(precision, backbone, device, engine)
    return plan.precision, plan.why("precision")


def to_prediction(entry: ServedRun, logits: np.ndarray) -> Prediction:
    scores = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).tolist()
    index = int(np.argmax(logits))
    return Prediction(index, entry.label_names[index], scores, [float(x) for x in logits])


def name_runs(run_dirs: list[str | Path] = (), named: list[str] = ()) -> dict[str, Path]:
    """Names for run folders: each folder's own name, or NAME=DIR; clashes are errors, not overwrites."""
    out: dict[str, Path] = {}
    pairs = [(Path(d).expanduser().resolve().name, Path(d)) for d in run_dirs]
    for item in named:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise XlpromptError(f"--name {item!r}: write NAME=RUN_DIR.")
        pairs.append((name, Path(path)))
    for name, path in pairs:
        check_name(name)
        if name in out:
            raise XlpromptError(f"Two run folders are named {name!r} ({out[name]} and {path}): name them with "
                                "--name NAME=DIR.")
        out[name] = path
    return out
