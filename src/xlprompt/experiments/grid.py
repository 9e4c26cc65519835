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

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runs.config import (TrainConfig, config_from_settings, flat_settings, id_dict, method_option_settings,
                      methods_with, settings_of)
from ..core.errors import XlpromptError
from ..core.settings import Setting, aliases_of, declared, setting

TOP_LEVEL = {"fixed", "axes", "name", "description"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a resolved config plus what to evaluate it on."""

    config: TrainConfig
    languages: Any = setting("all", "Evaluation languages: all, or comma-separated codes.", kind="languages",
                             aliases=("langs",), column=False)
    split: str | None = setting("test", "Evaluation split.", optional=True, none_shows="the task's test split")
    limit_per_language: int | None = setting(None, "Score at most N rows per language (a fixed, seedless rule).",
                                             kind="int", none_shows="every row", id_neutral=None)
    alignment: int | None = setting(None, "Parallel examples per language whose alignment the run records "
                                    "while its weights are there (tasks with parallel data).", kind="int",
                                    none_shows="not measured", id_neutral=None)

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
        if hasattr(m, "prompt_length"):
            bits.append(f"L{m.prompt_length}")
        bits += [f"shots={c.shots or 'all'}", f"seed={c.seed}", "MF" if c.freeze_model else "noMF"]
        if getattr(m, "reparam", "none") != "none":
            bits.append(m.reparam)
        return " ".join(bits)


def run_id(spec_dict: dict) -> str:
    """The hash of a spec: settings at their `id_neutral` value are left out (an option added after stores
    were written never renames a finished run) and a renamed setting hashes under its `id_key`."""
    view = {**spec_dict, "config": id_dict(spec_dict.get("config", {}))}
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def eval_settings() -> dict[str, Setting]:
    return declared(RunSpec, where="eval")


def grid_settings() -> dict[str, Setting]:
    """Every grid key: the declared settings of a run and of its evaluation."""
    return {**flat_settings(), **eval_settings()}


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
    keys = grid_settings()
    aliases = aliases_of(keys)
    key = aliases.get(key, key)
    if key not in keys:
        raise XlpromptError(f"Unknown grid key {key!r} in {where}; valid keys: {', '.join(sorted(keys))} "
                            f"(aliases: {', '.join(f'{a}={b}' for a, b in aliases.items())}).")
    return key


def _check_value(key: str, value: Any, where: str) -> Any:
    return grid_settings()[key].check(value, where)


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


def _build_spec(settings: dict, context: str) -> RunSpec:
    from ..tasks import get_task

    evals = eval_settings()
    try:
        config = config_from_settings({k: v for k, v in settings.items() if k not in evals})
    except XlpromptError as exc:
        raise XlpromptError(f"Invalid run {context}: {exc}") from None
    task = get_task(config.task)
    split = settings.get("split") or task.eval_split
    return RunSpec(config, settings.get("languages", "all"), split, settings.get("limit_per_language"),
                   settings.get("alignment"))


def _check_method_options(fixed: dict, blocks: list[dict]) -> None:
    """A method option no method of its product accepts is a typo or a mistake: say so, don't drop it."""
    from ..runs.config import METHOD_ALIASES, METHOD_CONFIGS

    options = method_option_settings()
    for axes in blocks:
        both = {**fixed, **axes}
        methods = axes.get("method") or [fixed.get("method", "prompt")]
        for m in methods:
            if METHOD_ALIASES.get(m, m) not in METHOD_CONFIGS:
                raise XlpromptError(f"Unknown method {m!r}: choose one of {', '.join(METHOD_ALIASES)}.")
        kinds = {METHOD_ALIASES.get(m, m) for m in methods}
        for key in both:
            if key in options and not kinds & set(methods_with(key)):
                raise XlpromptError(f"{key} does not apply to method(s) {', '.join(methods)}; it applies to "
                                    + ", ".join(methods_with(key)) + ".")


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


def spec_settings(spec: RunSpec) -> dict:
    """One level of keys named as in grid files: the run's settings, the method and its options, evaluation."""
    return {**settings_of(spec.config), "languages": spec.languages, "split": spec.split,
            "limit_per_language": spec.limit_per_language, "alignment": spec.alignment}


def varying_fields(specs: list[RunSpec]) -> list[str]:
    """Settings whose value differs between specs (the columns worth showing in a dry run)."""
    flat = [spec_settings(s) for s in specs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
