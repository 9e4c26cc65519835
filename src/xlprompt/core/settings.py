"""Settings are declared once, on the dataclass field that holds them; everything else reads the declaration.

    epochs: int = setting(5, "Training epochs.", why=True)

A declaration carries the default, the help text and the kind, and what readers need: old spellings that
still load (`aliases`), how a missing value reads (`none_shows`: "all" samples per class), whether it is a
column of the results store and an axis of the report, whether the "why" analysis varies it, and the
value at which it is left out of run ids (`id_neutral`: settings added after stores were written, so a
new option never renames a finished run). From these the CLI options (`cli.options`), grid keys
(`experiments.grid`), store columns (`experiments.store`) and report axes (`analysis.tables`) are derived.

Why dataclass field metadata rather than pydantic: the configs stay the plain dataclasses that run folders
round-trip through JSON and that PEFT-style users construct by hand, and no dependency is added.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .errors import XlpromptError

KINDS = ("int", "float", "bool", "str", "shots", "strlist", "floatlist", "languages", "codes", "dict")
_MISSING = dataclasses.MISSING
NEUTRAL_NONE = object()  # id_neutral=None is a real value; this marks "no neutral value"


@dataclass(frozen=True)
class Setting:
    """What one declared setting is: everything but its name and default lives here."""

    name: str
    kind: str
    help: str
    default: Any = None
    optional: bool = False      # None is a value (with its meaning in `none_shows` or the help)
    aliases: tuple = ()         # older spellings, read from grids, CLI and saved configs
    none_shows: str | None = None  # how None reads in tables and reports (shots: "all")
    cli: bool = True            # an option of `xlprompt train`
    column: bool = True         # a column of the results store, an axis of the report
    why: bool = False           # varied by the report's "why does the prompt lose to the probe" rows
    id_neutral: Any = NEUTRAL_NONE  # at this value the setting is left out of the run id
    id_key: str | None = None   # the name it hashes under, where an older name is kept for run ids
    stored: Callable | None = None  # config dict -> the store column's value (an effective value)
    where: str = "config"       # config | method | eval: which object holds it

    @property
    def dtype(self) -> str:
        return {"int": "Int64", "float": "float64", "bool": "boolean", "shots": "Int64"}.get(self.kind, "string")

    def show(self, value) -> str:
        """The value as readers see it: None as the declaration says, numbers plainly."""
        if value is None or (isinstance(value, float) and value != value) or str(value) in ("<NA>", "nan"):
            return self.none_shows or "default"
        if self.kind in ("int", "shots") and isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def check(self, value: Any, where: str) -> Any:
        """Type-check one value and normalise it (ints written for floats, 'all' shots) so hashes agree."""
        kind = self.kind

        def bad(expected: str):
            return XlpromptError(f"{where}: {self.name} = {value!r} is not {expected}.")

        if value is None and (self.optional or kind == "shots"):
            return None
        if kind == "shots":
            if isinstance(value, str) and value.strip().lower() == "all":
                return None
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
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
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad("a list of strings")
            return value
        if kind == "floatlist":
            if isinstance(value, str):
                try:
                    value = [float(v) for v in value.split(",") if v.strip()]
                except ValueError:
                    raise bad("a comma-separated list of numbers") from None
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
        if kind == "codes":  # one code, or several in their given order (one stays a plain string)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise bad("a language code or a list of them")
            if len(set(value)) != len(value):
                raise bad("a list without repeats")
            return value[0] if len(value) == 1 else value
        if kind == "dict":
            if not isinstance(value, dict):
                raise bad("a table")
            return value
        raise AssertionError(kind)


def setting(default: Any = _MISSING, help: str = "", *, kind: str | None = None, default_factory=_MISSING,
            **declared) -> Any:
    """A dataclass field that declares a setting (see the module docstring for the keywords)."""
    if kind is None:
        sample = default_factory() if default_factory is not _MISSING else default
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(sample))
        if kind is None:
            raise TypeError(f"setting({default!r}): give kind= when the default does not show it")
    if kind not in KINDS:
        raise TypeError(f"unknown setting kind {kind!r}")
    declared.setdefault("optional", default is None)
    meta = {"setting": {"kind": kind, "help": help, **declared}}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls, where: str = "config") -> dict[str, Setting]:
    """name -> Setting for every declared field of a dataclass, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is None or not f.init:
            continue
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None)
        out[f.name] = Setting(name=f.name, default=default, where=where, **meta)
    return out


def aliases_of(settings: dict[str, Setting]) -> dict[str, str]:
    """old spelling -> declared name."""
    return {alias: s.name for s in settings.values() for alias in s.aliases}


def read_aliases(d: dict, settings: dict[str, Setting], owner: str) -> dict:
    """A saved or typed dict with old spellings renamed; a setting given twice is an error."""
    names = aliases_of(settings)
    out = {}
    for key, value in d.items():
        name = names.get(key, key)
        if name in out:
            raise XlpromptError(f"{owner} sets {name} twice (as {key} and {name}).")
        out[name] = value
    return out


def id_view(d: dict, settings: dict[str, Setting]) -> dict:
    """A config dict as run ids hash it: neutral values dropped, settings under their hashed names."""
    out = {}
    for key, value in d.items():
        s = settings.get(key)
        if s is not None and s.id_neutral is not NEUTRAL_NONE and value == s.id_neutral:
            continue
        out[s.id_key if s is not None and s.id_key else key] = value
    return out
