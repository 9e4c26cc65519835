"""The command-line app object and what every command shares (the app, consoles, error handling, data paths).

Kept apart from cli.py so command modules register on the same `app` also under `python -m xlprompt.cli`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import XlpromptError

# no local variables in tracebacks: they would print secrets such as serve's token
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Soft prompts for cross-lingual transfer on frozen multilingual models.")
console = Console()
err_console = Console(stderr=True)


def friendly(fn):
    """Turn XlpromptError into one red line and exit code 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except XlpromptError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
            raise typer.Exit(2)
    return wrapper


def _data_dir(value: Optional[Path]) -> Optional[str]:
    if value is None:
        return os.environ.get("XLPROMPT_DATA") or None
    if not value.is_dir():
        raise XlpromptError(f"--data-dir {value} does not exist or is not a folder.")
    return str(value)


def _own_data(value: Optional[Path]) -> Optional[str]:
    """Own data may be a folder, one file, or hf:DATASET (checked by the loader, which names what is wrong)."""
    if value is None or str(value).startswith("hf:"):
        return None if value is None else str(value)
    if not value.exists():
        raise XlpromptError(f"--data-dir {value} does not exist; own data is a folder, a .tsv/.csv/.jsonl file "
                            "or hf:DATASET.")
    return str(value)


DEVICE_HELP = "Where it runs: auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps. Never part of a run."
DTYPE_HELP = ("The frozen model's weights: auto (bf16 on a GPU that has it; on a CPU bf16 where it has native bf16 "
              "and bf16 measured fastest, else fp32: see `xlprompt plan`) | fp32 | bf16 | fp16; prompts and heads "
              "stay fp32.")


def _execution(device: str, dtype: str) -> dict:
    """Check --device/--dtype before anything loads or is written (`--device cuda` without CUDA is one
    error line); the strings themselves go on to the API, which resolves them the same way."""
    from .execution import check_device

    check_device(device, dtype)
    return {"device": device, "dtype": dtype}


# ------------------------------------------------------------------ options derived from declarations

def _option(s, default, help_text: str):
    """One typer option for a declared setting: its name, its old spellings, its help."""
    flag = s.name.replace("_", "-")
    olds = [a.replace("_", "-") for a in s.aliases]
    if s.kind == "bool":
        decls = [f"--{flag}/--no-{flag}", *(f"--{a}/--no-{a}" for a in olds)]
    else:
        decls = [f"--{flag}", *(f"--{a}" for a in olds)]
    return typer.Option(default, *decls, help=help_text, show_default=default is not None)


def _annotation(s, optional: bool):
    base = {"int": int, "float": float, "bool": bool}.get(s.kind, str)  # shots, lists: text, checked below
    return Optional[base] if optional else base


def with_settings(settings, defaults: dict | None = None, help_extra: dict | None = None):
    """Give a command one option per declared setting (`settings`: name -> Setting, or a function giving
    them); the command receives the values the user gave or the declared defaults as `settings=dict`.
    Options a method declares default to None here (the chosen method's own default applies); their help
    names each method's default. `defaults`: this command's own defaults for some settings."""
    import inspect
    import typing

    def decorate(fn):
        declared = settings() if callable(settings) else settings
        own = {k: v for k, v in typing.get_type_hints(fn).items() if k not in ("settings", "return")}
        params, annotations = [], {}
        for name, s in declared.items():
            per_method = s.where == "method" and name != "method"
            default = (defaults or {}).get(name, None if per_method else s.default)
            if isinstance(default, list):
                default = ",".join(map(str, default))
            help_text = s.help + ((help_extra or {}).get(name, ""))
            if default is None and s.none_shows and not per_method:
                help_text += f" [default: {s.none_shows}]"
            optional = default is None
            param = inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                      default=_option(s, default, help_text),
                                      annotation=_annotation(s, optional))
            params.append(param)
            annotations[name] = param.annotation
        params += [p.replace(annotation=own[p.name]) for p in inspect.signature(fn).parameters.values()
                   if p.name != "settings"]
        annotations.update(own)

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {}
            for name, s in declared.items():
                value = kwargs.pop(name)
                flag = f"--{name.replace('_', '-')}"
                values[name] = s.check(value, flag) if value is not None and s.kind not in ("bool",) else value
            return fn(settings=values, **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = annotations
        return wrapper
    return decorate
