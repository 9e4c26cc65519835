"""The command-line app object and what every command shares (the app, consoles, error handling, data paths,
and the options derived from declared settings: `with_settings`).

Kept apart from the command modules so each registers on the same `app` (cli/__init__ imports them).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..core.errors import XlpromptError

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
    from ..execution import check_device

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


class _SettingsCommand:
    """A command whose options are the declared settings, read when the CLI is built (not at import), so a
    method or setting registered later (a plugin, a test) is an option too."""

    def __init__(self, fn, settings, defaults, help_extra):
        functools.update_wrapper(self, fn)
        self.fn, self.settings, self.defaults, self.help_extra = fn, settings, defaults or {}, help_extra
        self.__annotations__ = {}  # one dict, filled in place: wrappers made by functools.wraps share it
        self._declared = {}

    @property
    def __signature__(self):
        import inspect
        import typing

        declared = self.settings() if callable(self.settings) else self.settings
        extra = self.help_extra() if callable(self.help_extra) else (self.help_extra or {})
        own = {k: v for k, v in typing.get_type_hints(self.fn).items() if k not in ("settings", "return")}
        params = []
        for name, s in declared.items():
            per_method = s.where == "method" and name != "method"
            default = self.defaults.get(name, None if per_method else s.default)
            if isinstance(default, list):
                default = ",".join(map(str, default))
            help_text = s.help + extra.get(name, "")
            if default is None and s.none_shows and not per_method:
                help_text += f" [default: {s.none_shows}]"
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=_option(s, default, help_text),
                                            annotation=_annotation(s, default is None)))
        params += [p.replace(annotation=own[p.name]) for p in inspect.signature(self.fn).parameters.values()
                   if p.name != "settings"]
        self.__annotations__.clear()
        self.__annotations__.update({p.name: p.annotation for p in params})
        self._declared = declared
        return inspect.Signature(params)

    def __call__(self, **kwargs):
        values = {}
        for name, s in self._declared.items():
            value = kwargs.pop(name)
            values[name] = s.check(value, f"--{name.replace('_', '-')}") if value is not None and s.kind != "bool" \
                else value
        return self.fn(settings=values, **kwargs)


def with_settings(settings, defaults: dict | None = None, help_extra=None):
    """Give a command one option per declared setting (`settings`: name -> Setting, or a function giving
    them); the command receives the values the user gave or the declared defaults as `settings=dict`.
    Options a method declares default to None here (the chosen method's own default applies).
    `defaults`: this command's own defaults for some settings; `help_extra`: name -> text added to the help
    (or a function giving that)."""
    return lambda fn: _SettingsCommand(fn, settings, defaults, help_extra)
