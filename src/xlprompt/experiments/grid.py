"""Grid files → run specs: `[fixed]` settings crossed with `[axes]` lists, each run named by a config hash.

A grid file (TOML, or YAML when PyYAML is installed):

    [fixed]
    task = "sib200"
    model = "multilingual-e5-small"
    languages = ["eng_Latn", "deu_Latn"]   # evaluation languages, or "all"
    [axes]
    prompt_length = [1, 4]
    shots = [8, "all"]
    seed = [0, 1]

`axes` may also be a list of tables (`[[axes]]` in TOML): the grid is then the union of their products,
so one file can hold several one-factor experiments around a shared baseline (duplicates collapse,
because equal configs get equal run ids).

The run id hashes the *resolved* TrainConfig (every field, defaults included) plus the evaluation
languages and split, so key order, aliases and explicitly written defaults never change it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import XlpromptError
from ..prompts.config import METHOD_ALIASES, METHOD_CONFIGS, PROBE_C_GRID, method_config

# grid key -> (kind, where): where is "config" (a TrainConfig field), "method" (a method option), "eval"
KEYS: dict[str, tuple[str, str]] = {
    "task": ("str", "config"), "model": ("str", "config"), "train_language": ("str?", "config"),
    "shots": ("shots", "config"), "seed": ("int", "config"), "epochs": ("int", "config"),
    "batch_size": ("int", "config"), "lr": ("float", "config"), "head_lr": ("float?", "config"),
    "warmup": ("float", "config"), "max_length": ("int", "config"), "weight_decay": ("float", "config"),
    "head_weight_decay": ("float?", "config"),
    "freeze_model": ("bool", "config"), "model_lr": ("float", "config"), "pooling": ("str", "config"),
    "loss_over": ("str", "config"), "label_words": ("strlist", "config"), "data_dir": ("str?", "config"),
    "eval_batch_size": ("int", "config"),
    "method": ("str", "method"),
    "prompt_length": ("int", "method"), "init": ("str", "method"), "init_range": ("float", "method"),
    "reparam": ("str", "method"), "reparam_hidden": ("int?", "method"), "position": ("str", "method"),
    "projection": ("bool", "method"), "projection_hidden": ("int", "method"),
    "solver": ("str", "method"), "c_grid": ("floatlist", "method"), "head_init": ("str", "config"),
    "languages": ("languages", "eval"), "split": ("str?", "eval"), "limit_per_language": ("int?", "eval"),
    "alignment": ("int?", "eval"),
}
ALIASES = {"freeze": "freeze_model", "prefix_projection": "projection", "train_lang": "train_language",
           "length": "prompt_length", "langs": "languages"}
METHOD_OPTION = {"prompt_length": "length"}  # grid name -> method dataclass field, where they differ
TOP_LEVEL = {"fixed", "axes", "name", "description"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a resolved config plus what to evaluate it on."""

    config: TrainConfig
    languages: Any = "all"  # "all" or a list of codes
    split: str = "test"
    limit_per_language: int | None = None  # evaluate.limit_per_language; None (every row) leaves the id as it was
    # parallel examples per language whose alignment the run records (representations.measure_run) while its
    # weights are there, on tasks with parallel data; None: not measured (the id stays as it was)
    alignment: int | None = None

    @property
    def run_id(self) -> str:
        return run_id(self.to_dict())

    def to_dict(self) -> dict:
        out = {"config": self.config.to_dict(), "languages": self.languages, "split": self.split}
        if self.limit_per_language is not None:
            out["limit_per_language"] = self.limit_per_language
        if self.alignment is not None:
            out["alignment"] = self.alignment
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(TrainConfig.from_dict(d["config"]), d.get("languages", "all"), d.get("split", "test"),
                   d.get("limit_per_language"), d.get("alignment"))

    def label(self) -> str:
        """A short human description: model, method and its main knobs."""
        c, m = self.config, self.config.method
        bits = [Path(c.model).name, m.type]
        if hasattr(m, "length"):
            bits.append(f"L{m.length}")
        bits += [f"shots={c.shots or 'all'}", f"seed={c.seed}", "MF" if c.freeze_model else "noMF"]
        if getattr(m, "reparam", "none") != "none":
            bits.append(m.reparam)
        return " ".join(bits)


# Settings added after stores were first written, with the value every earlier run had. At that value a
# setting is left out of the hash, so adding an option never renames (and re-runs) a finished sweep; any
# other value enters the hash as usual. A new TrainConfig or method field belongs here, with its default.
# (Head-only runs before the converged probe were AdamW runs: `solver` is neutral at "adamw", so their ids
# stay and probe runs get new ones.)
ID_NEUTRAL: dict[str, dict] = {"config": {"head_init": "random", "head_weight_decay": None},
                               "method": {"solver": "adamw", "c_grid": list(PROBE_C_GRID)}}


def _id_view(spec_dict: dict) -> dict:
    config = dict(spec_dict.get("config", {}))
    method = dict(config.get("method") or {})
    for key, value in ID_NEUTRAL["method"].items():
        if key in method and method[key] == value:
            del method[key]
    for key, value in ID_NEUTRAL["config"].items():
        if key in config and config[key] == value:
            del config[key]
    config["method"] = method
    return {**spec_dict, "config": config}


def run_id(spec_dict: dict) -> str:
    canonical = json.dumps(_id_view(spec_dict), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_grid(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise XlpromptError(f"Grid file {path} does not exist.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise XlpromptError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8.") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise XlpromptError(f"{path} is YAML but PyYAML is not installed: `pip install pyyaml`, "
                                "or write the grid as TOML.") from None
        try:
            grid = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise XlpromptError(f"{path} is not valid YAML: {exc}") from None
    elif path.suffix == ".toml":
        import tomllib

        try:
            grid = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise XlpromptError(f"{path} is not valid TOML: {exc}") from None
    else:
        raise XlpromptError(f"Grid file {path} must end in .toml, .yaml or .yml.")
    if not isinstance(grid, dict):
        raise XlpromptError(f"{path} must hold a table with [fixed] and [axes], not {type(grid).__name__}.")
    return grid


def _canonical_key(key: str, where: str) -> str:
    key = ALIASES.get(key, key)
    if key not in KEYS:
        valid = ", ".join(sorted(KEYS))
        raise XlpromptError(f"Unknown grid key {key!r} in {where}; valid keys: {valid} "
                            f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())}).")
    return key


def _check_value(key: str, value: Any, where: str) -> Any:
    """Type-check one value and normalise it (ints written for floats, 'all' shots) so hashes agree."""
    kind = KEYS[key][0]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")

    def bad(expected: str):
        return XlpromptError(f"{where}: {key} = {value!r} is not {expected}.")

    if value is None and (optional or kind in ("shots",)):
        return None
    if kind == "shots":
        if isinstance(value, str) and value.lower() == "all":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a positive number of samples per class or \"all\"")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return value
    if kind == "floatlist":
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad("a non-empty list of numbers")
        return [float(v) for v in value]
    if kind == "languages":
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise bad("\"all\" or a non-empty list of language codes")
        return sorted(set(value))  # evaluation order does not matter; the hash must not see it
    raise AssertionError(kind)


def _blocks(grid: dict) -> tuple[dict, list[dict]]:
    unknown = set(grid) - TOP_LEVEL
    if unknown:
        raise XlpromptError(f"Unknown top-level grid entries {sorted(unknown)}; a grid has "
                            f"{', '.join(sorted(TOP_LEVEL))} (settings go under [fixed] or [axes]).")
    fixed_raw = grid.get("fixed", {}) or {}
    if not isinstance(fixed_raw, dict):
        raise XlpromptError("[fixed] must be a table of settings.")
    fixed = {}
    for key, value in fixed_raw.items():
        k = _canonical_key(key, "[fixed]")
        if k in fixed:
            raise XlpromptError(f"[fixed] sets {k} twice (through an alias).")
        fixed[k] = _check_value(k, value, "[fixed]")
    axes_raw = grid.get("axes", {})
    blocks = axes_raw if isinstance(axes_raw, list) else [axes_raw]
    out = []
    for i, block in enumerate(blocks):
        where = "[axes]" if len(blocks) == 1 else f"[[axes]] #{i + 1}"
        if not isinstance(block, dict):
            raise XlpromptError(f"{where} must be a table of lists.")
        axes: dict[str, list] = {}
        for key, values in block.items():
            k = _canonical_key(key, where)
            if k in fixed:
                raise XlpromptError(f"{k} is both in [fixed] and in {where}: keep it in one place.")
            if k in axes:
                raise XlpromptError(f"{where} sets {k} twice (through an alias).")
            if k == "languages":
                raise XlpromptError("languages is what every run is evaluated on: put it in [fixed].")
            if not isinstance(values, list):
                raise XlpromptError(f"{where}: {k} must be a list of values (single values go in [fixed]).")
            if not values:
                raise XlpromptError(f"{where}: axis {k} is empty; give at least one value or remove it.")
            axes[k] = [_check_value(k, v, f"{where} {k}") for v in values]
        out.append(axes)
    return fixed, out


def _method_names(name: str) -> str:
    kind = METHOD_ALIASES.get(name, name)
    if kind not in METHOD_CONFIGS:
        raise XlpromptError(f"Unknown method {name!r}: choose one of {', '.join(METHOD_ALIASES)}.")
    return kind


def _method_fields(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHOD_CONFIGS[kind]) if f.init}


def _build_spec(settings: dict, context: str) -> RunSpec:
    from ..tasks import get_task

    config_kw = {k: v for k, v in settings.items() if KEYS[k][1] == "config"}
    options = {METHOD_OPTION.get(k, k): v for k, v in settings.items() if KEYS[k][1] == "method"}
    kind = _method_names(options.pop("method", "prompt"))
    options = {k: v for k, v in options.items() if k in _method_fields(kind)}  # e.g. no length for finetune
    try:
        config = TrainConfig(method=method_config(kind, **options), **config_kw)
    except XlpromptError as exc:
        raise XlpromptError(f"Invalid run {context}: {exc}") from None
    task = get_task(config.task)
    split = settings.get("split") or task.eval_split
    return RunSpec(config, settings.get("languages", "all"), split, settings.get("limit_per_language"),
                   settings.get("alignment"))


def _check_method_options(fixed: dict, blocks: list[dict]) -> None:
    """A method option no method of its product accepts is a typo or a mistake: say so, don't drop it."""
    for axes in blocks:
        both = {**fixed, **axes}
        methods = axes.get("method") or [fixed.get("method", "prompt")]
        accepted = set().union(*(_method_fields(_method_names(m)) for m in methods))
        for key in both:
            if KEYS[key][1] == "method" and key != "method" and METHOD_OPTION.get(key, key) not in accepted:
                raise XlpromptError(f"{key} does not apply to method(s) {', '.join(methods)}; it applies to "
                                    + ", ".join(k for k in METHOD_CONFIGS
                                                if METHOD_OPTION.get(key, key) in _method_fields(k)) + ".")


def _check_languages(specs: list[RunSpec]) -> None:
    """Catch mistyped evaluation languages before hours of training (train languages fail per run)."""
    from ..data.languages import resolve_languages
    from ..tasks import get_task

    seen = set()
    for spec in specs:
        key = (spec.config.task, spec.config.data_dir, json.dumps(spec.languages))
        if key in seen or spec.languages == "all":
            continue
        seen.add(key)
        try:
            available = get_task(spec.config.task).languages(spec.config.data_dir)
        except XlpromptError:
            continue  # data not reachable from here (e.g. only on the cluster): each run will say
        resolve_languages(spec.languages, available)


def expand_grid(grid: dict | str | Path) -> list[RunSpec]:
    """Every run of a grid, in axis order, duplicates (equal run ids) dropped."""
    if not isinstance(grid, dict):
        grid = load_grid(grid)
    fixed, blocks = _blocks(grid)
    _check_method_options(fixed, blocks)
    specs, ids = [], set()
    for axes in blocks:
        names = list(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            settings = {**fixed, **dict(zip(names, values))}
            shown = {"method": settings.get("method", "prompt"), **dict(zip(names, values))}
            context = ", ".join(f"{n}={v!r}" for n, v in shown.items())
            spec = _build_spec(settings, context)
            if spec.run_id not in ids:
                ids.add(spec.run_id)
                specs.append(spec)
    _check_languages(specs)
    return specs


def flat_settings(spec: RunSpec) -> dict:
    """One level of keys named as in grid files: config fields, method (its type) and its options."""
    config = spec.config.to_dict()
    method = config.pop("method")
    out = {**config, "method": method.pop("type")}
    names = {v: k for k, v in METHOD_OPTION.items()}
    out.update({names.get(k, k): v for k, v in method.items()})
    out.update(languages=spec.languages, split=spec.split, limit_per_language=spec.limit_per_language,
               alignment=spec.alignment)
    return out


def varying_fields(specs: list[RunSpec]) -> list[str]:
    """Settings whose value differs between specs (the columns worth showing in a dry run)."""
    flat = [flat_settings(s) for s in specs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
