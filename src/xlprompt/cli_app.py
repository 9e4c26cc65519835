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
