"""The resolved configuration of a training run: what `xlprompt train` parses into and run folders keep."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import XlpromptError
from ..prompts.config import (METHOD_ALIASES, METHOD_CONFIGS, InputPromptConfig, method_config, method_from_dict,
                             method_settings)
from ..core.settings import Setting, declared, id_view, read_aliases, setting


@dataclass
class TrainConfig:
    task: str = setting("sib200", "Registered task name (`xlprompt tasks`).")
    model: str = setting("multilingual-e5-small", "Hub id, local folder, or the offline default.")
    method: Any = field(default_factory=InputPromptConfig)
    # several sources: --shots per class from each; the first draws with the seed, the others with the seed
    # mixed with their code (data.sampling.multilingual_splits); one language stays a plain string
    train_language: str | list[str] | None = setting(
        None, "Training language, or several (comma-separated; --shots per class from each).", kind="codes",
        aliases=("train_lang", "train_languages"), none_shows="the task's (English)",
        stored=lambda c: ",".join(c["train_language"]) if isinstance(c.get("train_language"), list)
        else c.get("train_language"))
    target_shots: int | None = setting(None, "A few target examples: this many per class from the train split of "
                                       "each --target-languages language, added to the training set.",
                                       kind="int", none_shows="none", id_neutral=None)
    target_languages: str | list[str] | None = setting(
        None, "Where the target examples come from: all, or comma-separated codes (never their test split).",
        kind="languages", none_shows="none", id_neutral=None,
        stored=lambda c: None if c.get("target_languages") is None else (
            c["target_languages"] if isinstance(c["target_languages"], str) else ",".join(c["target_languages"])))
    start: str | None = setting(None, "Continue a saved run (RUN_DIR): its prompt and head are where training "
                                "starts; the model stays frozen (what `xlprompt adapt` does).", kind="str",
                                none_shows="a fresh prompt and head", id_neutral=None)
    shots: int | None = setting(None, "Samples per class from train (all: every sentence); dev gets ⌈n/4⌉.",
                                kind="shots", none_shows="all")
    seed: int = setting(0, "Seed of the prompt, head and sampling.", column=True)
    epochs: int = setting(5, "Training epochs.", why=True)
    batch_size: int = setting(8, "Training batch size.")
    lr: float = setting(5e-3, "Prompt learning rate (Philippy et al.).", why=True)
    # a freshly initialised linear head needs more than the prompt's 5e-3
    head_lr: float = setting(5e-2, "Learning rate of a trained head (linear, per-token, span).", why=True)
    warmup: float = setting(0.1, "Linear warmup, a fraction of the training steps.")
    max_length: int = setting(128, "Max tokens of the text, before prompt slots.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    head_weight_decay: float | None = setting(
        None, "AdamW's decoupled weight decay on the trained head alone.", kind="float", why=True,
        none_shows="weight_decay", id_neutral=None,
        stored=lambda c: next(v for v in (c.get("head_weight_decay"), c.get("weight_decay"), 0.0) if v is not None))
    freeze_model: bool | None = setting(None, "Keep the model frozen (MF).", kind="bool", aliases=("freeze",),
                                        none_shows="the method's (frozen but for finetune)")
    model_lr: float = setting(2e-5, "Backbone learning rate when it trains (--no-freeze-model, finetune).")
    pooling: str = setting("mean", "Encoder pooling: mean over real positions (e5) or first token.")
    loss_over: str = setting("vocabulary", "Decoder verbalizer loss: the whole vocabulary (Philippy) or the "
                             "label words.")
    label_words: list[str] | None = setting(None, "Comma-separated verbalizer words (decoders).", kind="strlist",
                                            none_shows="the task's words", column=False)
    data_dir: str | None = setting(None, "Data folder (env XLPROMPT_DATA).", kind="str", cli=False,
                                   none_shows="the shared data")
    eval_batch_size: int = setting(64, "Evaluation batch size during training (dev).", column=False)
    # own data (task="custom"): {path, text_column, text_pair_column, label_column, language_column,
    # split_column, format, kind}; label_names is filled from the training rows and saved with the run
    custom: dict | None = setting(None, "Own data: where and which columns.", kind="dict", cli=False,
                                  column=False)
    # prompt runs: random = a freshly initialised head; probe = the converged linear probe on the
    # unprompted frozen model (probe.py), fitted on the same training sentences, C chosen on dev
    head_init: str = setting("random", "Prompt runs: random | probe (start the head at the linear probe).",
                             why=True, id_neutral="random")

    def __post_init__(self):
        if isinstance(self.method, dict):
            self.method = method_from_dict(self.method)
        if self.freeze_model is None:
            self.freeze_model = not self.method.trains_backbone
        if self.method.trains_backbone and self.freeze_model:
            raise XlpromptError("Fine-tuning trains the model: drop --freeze (or use --method head for a "
                                "frozen model with a trained head).")
        for name in ("train_language", "target_languages"):
            if getattr(self, name) is not None:
                setattr(self, name, declared(TrainConfig)[name].check(getattr(self, name), name))
        if (self.target_shots is None) != (self.target_languages is None):
            raise XlpromptError("A few target examples need both --target-shots K and --target-languages L1,L2|all.")
        if self.target_shots is not None and self.target_shots < 1:
            raise XlpromptError(f"--target-shots must be >= 1, got {self.target_shots}.")
        sources = self.train_language if isinstance(self.train_language, list) else [self.train_language]
        if isinstance(self.target_languages, list) and set(sources) & set(self.target_languages):
            raise XlpromptError(f"{', '.join(sorted(set(sources) & set(self.target_languages)))} is both a training "
                                "language and a target language: drop it from one of them.")
        if self.start is not None and (not self.freeze_model or self.method.trains_backbone):
            raise XlpromptError("--start continues a prompt and head on the frozen model: it cannot train the model.")
        if self.shots is not None and self.shots < 1:
            raise XlpromptError(f"--shots must be >= 1 (or omitted for all), got {self.shots}.")
        if self.epochs < 1:
            raise XlpromptError(f"--epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise XlpromptError(f"--batch-size must be >= 1, got {self.batch_size}.")
        if (self.task == "custom") != (self.custom is not None):
            raise XlpromptError("Own data needs both task='custom' and custom={'path': ..., 'text_column': ..., "
                                "'label_column': ...} (CLI: --data-dir DIR --text-column C --label-column C).")
        if self.custom is not None:
            from ..data.custom import CustomSpec

            CustomSpec.from_dict(self.custom)  # unknown keys fail here, before any model loads
        if self.head_init not in ("random", "probe"):
            raise XlpromptError(f"Unknown head_init {self.head_init!r}: use 'random' or 'probe'.")
        if self.head_weight_decay is not None and self.head_weight_decay < 0:
            raise XlpromptError(f"head_weight_decay must be >= 0 (or None for weight_decay), got {self.head_weight_decay}.")
        if not 0.0 <= self.warmup < 1.0:
            raise XlpromptError(f"warmup is a fraction of training steps in [0, 1), got {self.warmup}.")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["method"] = dataclasses.asdict(self.method)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = read_aliases(d, declared(cls), "config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise XlpromptError(f"Unknown config keys {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**d)


# ------------------------------------------------------------------ one flat namespace of settings
# CLI options, grid keys and store columns name settings in one level: the run's (TrainConfig's), the
# method (by its command-line name) and the method's options. These two functions are the only bridge.

def config_settings() -> dict[str, Setting]:
    return declared(TrainConfig)


def method_setting() -> Setting:
    names = " | ".join(f"{cls.cli_name} ({cls.label})" for cls in METHOD_CONFIGS.values())
    return Setting(name="method", kind="str", help=f"Method: {names}.", default="prompt", where="method",
                   none_shows="prompt")


def method_option_settings() -> dict[str, Setting]:
    """Every method's options by name (a name means one thing across methods: `register_config` checks)."""
    out: dict[str, Setting] = {}
    for kind in METHOD_CONFIGS:
        for name, s in method_settings(kind).items():
            out.setdefault(name, s)
    return out


def flat_settings() -> dict[str, Setting]:
    """name -> Setting for everything a run is configured by, in the order a reader expects."""
    return {**{k: v for k, v in config_settings().items() if k != "custom"}, "method": method_setting(),
            **method_option_settings()}


def methods_with(option: str) -> list[str]:
    return [k for k in METHOD_CONFIGS if option in method_settings(k)]


def config_from_settings(values: dict, custom: dict | None = None, strict: bool = False) -> TrainConfig:
    """A TrainConfig from flat, declared names (unset or None method options take the method's default).
    strict: a method option set for a method that has no such option is an error (else it is dropped, as
    a grid's [fixed] option is for the methods of an axis it does not apply to)."""
    config_names, method_names = config_settings(), method_option_settings()
    kind = METHOD_ALIASES.get(values.get("method") or "prompt", values.get("method"))
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method {values.get('method')!r}: choose one of {', '.join(METHOD_ALIASES)}.")
    own = method_settings(kind)
    options = {k: v for k, v in values.items() if k in method_names and k in own}
    stray = [k for k, v in values.items() if k in method_names and k not in own and v is not None
             and v != method_names[k].default]
    if strict and stray:
        raise XlpromptError(f"{', '.join('--' + k.replace('_', '-') for k in stray)} does not apply to --method "
                            f"{values.get('method')}; it applies to {', '.join(methods_with(stray[0]))}.")
    unknown = set(values) - set(config_names) - set(method_names) - {"method"}
    if unknown:
        raise XlpromptError(f"Unknown settings {sorted(unknown)}.")
    kw = {k: v for k, v in values.items() if k in config_names}
    if custom is not None:
        kw["custom"] = custom
    return TrainConfig(method=method_config(kind, **options), **kw)


def settings_of(config: TrainConfig) -> dict:
    """The flat, declared-name view of a config: its fields, the method's type and the method's options."""
    d = config.to_dict()
    method = d.pop("method")
    d.pop("custom", None)
    return {**d, "method": method.pop("type"), **method}


def id_dict(config_dict: dict) -> dict:
    """A saved config dict as run ids hash it (see settings.id_view)."""
    config = dict(config_dict)
    method = dict(config.get("method") or {})
    kind = method.get("type")
    if kind in METHOD_CONFIGS:
        method = id_view(method, method_settings(kind))
    config = id_view(config, config_settings())
    config["method"] = method
    return config


def method_defaults_note(option: str) -> str:
    """' (default: deep 16, prompt 10)': each method's own default of an option, for help texts."""
    parts = [f"{cls.cli_name} {method_settings(k)[option].show(method_settings(k)[option].default)}"
             for k, cls in METHOD_CONFIGS.items() if option in method_settings(k)]
    return f" (default: {', '.join(parts)})" if parts else ""


def source_languages(config: TrainConfig, task) -> list[str]:
    """The languages a run trains on (its sources; the task's default when unset), in their given order."""
    language = config.train_language or task.train_language
    return list(language) if isinstance(language, list) else [language]


def target_languages(config: TrainConfig, task) -> list[str]:
    """The languages a run's few target examples come from ("all": every other language the task has)."""
    if config.target_languages is None:
        return []
    if config.target_languages == "all":
        sources = source_languages(config, task)
        return [code for code in task.languages(config.data_dir) if code not in sources]
    return list(config.target_languages)
