"""One small config dataclass per method: the method space is data, not flags.

`method_from_dict` / `dataclasses.asdict` round-trip a config through JSON (the `type` key names the class).
A method says whether it needs a prompt module and whether it trains the backbone by default; the
training loop reads those two facts and never branches on the method itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import XlpromptError

REPARAMS = ("none", "mlp", "residual")


def _check_init(init: str) -> None:
    if init in ("random", "vocab") or init.startswith("text:") or init.startswith("run:"):
        return
    raise XlpromptError(f"Unknown prompt init {init!r}: use random, vocab, text:PHRASE or run:RUN_DIR.")


@dataclass
class InputPromptConfig:
    """Lester et al. soft prompt: L trainable vectors in the input sequence.

    Placement is decided by the model kind (PRODUCT.md): decoders read `text P </s>` and predict the label
    word at the last prompt slot; encoders read `<s> P text </s>`.
    init: random = uniform(-init_range, init_range); vocab = embeddings of random vocabulary tokens;
    text:PHRASE = the phrase's token embeddings repeated/cut to L; run:DIR = the prompt of a saved run.
    reparam: none; mlp = Linear(d,h)-ReLU-Linear(h,d)-LayerNorm (Philippy et al.); residual = x + mlp(x).
    """

    length: int = 10
    init: str = "random"
    init_range: float = 0.5
    reparam: str = "none"
    reparam_hidden: int | None = None  # None: the model's hidden size
    position: str = "auto"  # auto: the layouts above; start: before every token, as PEFT prompt tuning
    type: str = field(default="input_prompt", init=False)
    needs_prompt = True
    trains_backbone = False

    def __post_init__(self):
        if self.length < 1:
            raise XlpromptError(f"Prompt length must be >= 1, got {self.length}.")
        _check_init(self.init)
        if self.reparam not in REPARAMS:
            raise XlpromptError(f"Unknown reparameterization {self.reparam!r}: use one of {', '.join(REPARAMS)}.")
        if self.position not in ("auto", "start"):
            raise XlpromptError(f"Unknown prompt position {self.position!r}: use 'auto' or 'start'.")


@dataclass
class DeepPromptConfig:
    """P-tuning v2 / Tu et al.: a trainable prefix of L keys and values in every attention layer.

    projection: reparameterize the prefix through Linear(d, projection_hidden)-Tanh-Linear(., 2*layers*d).
    """

    length: int = 16
    projection: bool = False
    projection_hidden: int = 512
    init: str = "random"
    init_range: float = 0.5
    type: str = field(default="deep_prompt", init=False)
    needs_prompt = True
    trains_backbone = False

    def __post_init__(self):
        if self.length < 1:
            raise XlpromptError(f"Prompt length must be >= 1, got {self.length}.")
        if self.init not in ("random",) and not self.init.startswith("run:"):
            raise XlpromptError(f"Deep prompts support init random or run:RUN_DIR, got {self.init!r}.")


@dataclass
class FinetuneConfig:
    """Full fine-tuning of the model and a task head, no prompt (Tu et al.'s baseline)."""

    type: str = field(default="finetune", init=False)
    needs_prompt = False
    trains_backbone = True


PROBE_C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SOLVERS = ("lbfgs", "adamw")


@dataclass
class HeadOnlyConfig:
    """A linear head on the frozen model (over the pooled vector for encoders, the hidden state at the
    label position for decoders).

    solver: lbfgs = the converged linear probe (probe.py): the pooled features are computed once and an
    L2-regularised logistic regression is fitted to convergence for each C in `c_grid`; the C with the
    best dev accuracy is kept (ties: the smaller C, the stronger regularisation). adamw = the old
    behaviour: `epochs` of AdamW at `head_lr` through the frozen model, the epoch with the best dev loss kept.
    """

    solver: str = "lbfgs"
    c_grid: list = field(default_factory=lambda: list(PROBE_C_GRID))
    type: str = field(default="head", init=False)
    needs_prompt = False
    trains_backbone = False

    @property
    def fits_by_probe(self) -> bool:
        return self.solver == "lbfgs"

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise XlpromptError(f"Unknown head solver {self.solver!r}: use one of {', '.join(SOLVERS)}.")
        self.c_grid = [float(c) for c in self.c_grid]
        if not self.c_grid or any(not c > 0 for c in self.c_grid):
            raise XlpromptError(f"c_grid must list positive regularisation strengths C, got {self.c_grid}.")


METHOD_CONFIGS = {"input_prompt": InputPromptConfig, "deep_prompt": DeepPromptConfig,
                  "finetune": FinetuneConfig, "head": HeadOnlyConfig}
# what users type on the command line
METHOD_ALIASES = {"prompt": "input_prompt", "deep": "deep_prompt", "finetune": "finetune", "head": "head"}


def method_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method type {kind!r} in config: known {sorted(METHOD_CONFIGS)}.")
    cls = METHOD_CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - names
    if unknown:
        raise XlpromptError(f"Unknown options {sorted(unknown)} for method {kind}; known: {sorted(names)}.")
    if kind == "head" and "solver" not in d:
        d["solver"] = "adamw"  # saved before the probe existed: those head-only runs were trained by AdamW
    return cls(**d)


def method_config(name: str, **options):
    """Build a method config from its command-line name (prompt, deep, finetune, head)."""
    kind = METHOD_ALIASES.get(name, name)
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method {name!r}: choose one of {', '.join(METHOD_ALIASES)}.")
    cls = METHOD_CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})
