"""One small config dataclass per method: the method space is data, not flags.

`method_from_dict` / `dataclasses.asdict` round-trip a config through JSON (the `type` key names the class).
A method describes itself on its config class: `cli_name` (what users type), `label` (what readers see),
`enters` (how it enters the model: "input" slots, a per-layer "prefix", or None), `trains_backbone`,
`peft_type` (the PEFT adapter it maps to, or None), `uses_label_words` (decoders: verbalizer or a linear
head), `fits_by_probe` (fitted in closed form by probe.py instead of epochs), and
its options, declared with `settings.setting` (default, help, kind). The training loop, serving, the
engines, interop, the grid, the store and the report read those facts and never test a method's name.
A new method: its config (here or in its own module), its prompt module, and `prompts.register_method`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.errors import XlpromptError
from ..core.settings import declared, read_aliases, setting

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

    prompt_length: int = setting(10, "Prompt length L: trained vectors (input) or key/value pairs per layer "
                                 "(deep).", aliases=("length",), id_key="length")
    init: str = setting("random", "Prompt init: random (uniform ±init_range) | vocab | text:PHRASE | run:RUN_DIR "
                        "(deep prompts: random | run:RUN_DIR).")
    init_range: float = setting(0.5, "Random init: uniform(-r, r).")
    reparam: str = setting("none", "Input prompt reparameterization: none | mlp | residual.", why=True)
    reparam_hidden: int | None = setting(None, "Hidden size of the reparameterization MLP.", kind="int",
                                         none_shows="the model's hidden size")
    position: str = setting("auto", "auto (the layouts above) | start (before every token, as PEFT prompt "
                            "tuning).")
    type: str = field(default="input_prompt", init=False)
    cli_name = "prompt"
    label = "input prompt"
    enters = "input"  # trained vectors among the input embeddings
    trains_backbone = False
    peft_type = "PROMPT_TUNING"  # interop: the PEFT adapter it exports to and imports from
    uses_label_words = True  # on a decoder: scored through the task's label words (verbalizer)
    fits_by_probe = False

    def __post_init__(self):
        if self.prompt_length < 1:
            raise XlpromptError(f"Prompt length must be >= 1, got {self.prompt_length}.")
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

    prompt_length: int = setting(16, "Prompt length L: trained vectors (input) or key/value pairs per layer "
                                 "(deep).", aliases=("length",), id_key="length")
    prefix_projection: bool = setting(False, "Deep prompt: Linear-Tanh-Linear prefix projection.",
                                      aliases=("projection",), id_key="projection")
    projection_hidden: int = setting(512, "Hidden size of the prefix projection.")
    init: str = setting("random", "Prompt init: random (uniform ±init_range) | vocab | text:PHRASE | run:RUN_DIR "
                        "(deep prompts: random | run:RUN_DIR).")
    init_range: float = setting(0.5, "Random init: uniform(-r, r).")
    type: str = field(default="deep_prompt", init=False)
    cli_name = "deep"
    label = "deep prompt"
    enters = "prefix"  # trained keys and values in every attention layer
    trains_backbone = False
    peft_type = "PREFIX_TUNING"
    uses_label_words = True
    fits_by_probe = False

    def __post_init__(self):
        if self.prompt_length < 1:
            raise XlpromptError(f"Prompt length must be >= 1, got {self.prompt_length}.")
        if self.init not in ("random",) and not self.init.startswith("run:"):
            raise XlpromptError(f"Deep prompts support init random or run:RUN_DIR, got {self.init!r}.")


@dataclass
class FinetuneConfig:
    """Full fine-tuning of the model and a task head, no prompt (Tu et al.'s baseline)."""

    type: str = field(default="finetune", init=False)
    cli_name = "finetune"
    label = "fine-tuning"
    enters = None
    trains_backbone = True
    peft_type = None
    uses_label_words = True
    fits_by_probe = False


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

    solver: str = setting("lbfgs", "--method head: lbfgs (the converged linear probe, C chosen on dev) | adamw "
                          "(epochs of AdamW at --head-lr).", id_neutral="adamw")
    c_grid: list = setting(help="--method head, lbfgs: the regularisation strengths C tried on dev.",
                           kind="floatlist", default_factory=lambda: list(PROBE_C_GRID),
                           id_neutral=list(PROBE_C_GRID), column=False)
    type: str = field(default="head", init=False)
    cli_name = "head"
    label = "head only"
    enters = None
    trains_backbone = False
    peft_type = None
    uses_label_words = False  # on a decoder: a linear head on the hidden state at the label position

    @property
    def fits_by_probe(self) -> bool:
        return self.solver == "lbfgs"

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise XlpromptError(f"Unknown head solver {self.solver!r}: use one of {', '.join(SOLVERS)}.")
        self.c_grid = [float(c) for c in self.c_grid]
        if not self.c_grid or any(not c > 0 for c in self.c_grid):
            raise XlpromptError(f"c_grid must list positive regularisation strengths C, got {self.c_grid}.")


METHOD_CONFIGS: dict[str, type] = {}  # config type -> class
METHOD_ALIASES: dict[str, str] = {}   # what users type on the command line -> config type


def register_config(cls) -> type:
    """Make a method config known by its type and its command-line name (`prompts.register_method` also
    registers the prompt module that builds it)."""
    kind = cls.type
    for name, s in declared(cls, where="method").items():
        for other in METHOD_CONFIGS.values():
            theirs = declared(other, where="method").get(name)
            if theirs is not None and theirs.kind != s.kind:
                raise TypeError(f"method option {name} is {s.kind} in {cls.__name__} but {theirs.kind} in "
                                f"{other.__name__}: one name, one kind")
    METHOD_CONFIGS[kind] = cls
    METHOD_ALIASES[cls.cli_name] = kind
    return cls


for _cls in (InputPromptConfig, DeepPromptConfig, FinetuneConfig, HeadOnlyConfig):  # the builders: prompts/__init__
    register_config(_cls)


def method_settings(kind: str) -> dict:
    """name -> Setting of one method's options."""
    return declared(METHOD_CONFIGS[kind], where="method")


def method_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method type {kind!r} in config: known {sorted(METHOD_CONFIGS)}.")
    cls = METHOD_CONFIGS[kind]
    d = read_aliases(d, method_settings(kind), f"method {kind}")
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
    options = read_aliases(options, method_settings(kind), f"method {name}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})
