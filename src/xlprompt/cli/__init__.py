"""The `xlprompt` command: thin, parses options into the same config objects the Python API takes.

app.py holds the app, the consoles, error handling and the options derived from declared settings;
commands.py (train, evaluate, tasks, languages, quickstart, export, import-peft), experiments.py (sweep,
store, report, plan) and serve.py register their commands on it, in --help's order; quickstart.py is the
quickstart job itself.
"""
from __future__ import annotations

from . import commands, experiments, serve  # noqa: F401  (each registers its commands on `app`)
from .app import app


def main():  # pragma: no cover - console entry point alias
    app()


__all__ = ["app", "main"]
