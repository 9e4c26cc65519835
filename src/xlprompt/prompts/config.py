"""One small config dataclass per prompt method: the method space is data, not flags.

`method_from_dict` / `asdict` round-trip a config through JSON (the `type` key names the class).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import XlpromptError

INITS = ("random", "vocab")


@dataclass
class InputPromptConfig:
    """Lester et al. soft prompt: L trainable vectors in the input sequence.

    Placement is decided by the model kind (PRODUCT.md): decoders read `text P </s>` and predict the label
    word at the last prompt slot; encoders read `<s> P text </s>`.
    """

    length: int = 10
    init: str = "random"  # random: uniform(-init_range, init_range); vocab: sampled vocabulary embeddings
    init_range: float = 0.5
    type: str = field(default="input_prompt", init=False)

    def __post_init__(self):
        if self.length < 1:
            raise XlpromptError(f"Prompt length must be >= 1, got {self.length}.")
        if self.init not in INITS:
            raise XlpromptError(f"Unknown prompt init {self.init!r}: choose one of {', '.join(INITS)}.")


METHOD_CONFIGS = {"input_prompt": InputPromptConfig}


def method_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method type {kind!r} in config: known {sorted(METHOD_CONFIGS)}.")
    cls = METHOD_CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: v for k, v in d.items() if k in names})
