"""Language metadata for the 205 SIB-200 / FLORES-200 codes, and parsing of user language lists.

The metadata lives in a static `resources/languages.json` generated once by
`scripts/build_languages.py` (which uses `langcodes` plus hand fixes). Reading JSON at runtime keeps
`langcodes` out of the runtime dependencies and makes names stable across langcodes/CLDR releases.

A code is `<ISO 639-3>_<ISO 15924 script>`, e.g. `eng_Latn`, `zho_Hant`.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

from ..core.errors import XlpromptError

LIST_HINT = (
    "List the codes with `xlprompt languages` or "
    "`python -c \"from xlprompt.data.languages import all_languages; print(*all_languages())\"`."
)


@dataclass(frozen=True)
class LanguageInfo:
    """One language variety: `code` is the FLORES-200 code, `script` its ISO 15924 suffix."""

    code: str
    name: str
    iso639_3: str
    script: str
    script_name: str


@lru_cache(maxsize=1)
def _table() -> dict[str, LanguageInfo]:
    """Read languages.json once per process (it is small, ~30 KB)."""
    res = resources.files("xlprompt.data").joinpath("resources", "languages.json")
    try:
        raw = json.loads(res.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:  # a broken install or a checkout without the generated file
        raise XlpromptError(
            "The packaged language table xlprompt/data/resources/languages.json is missing; "
            "reinstall xlprompt or run `python scripts/build_languages.py` in a source checkout."
        ) from exc
    return {code: LanguageInfo(code=code, **fields) for code, fields in raw["languages"].items()}


def all_languages() -> list[str]:
    """Every code with metadata (the 205 SIB-200 codes), sorted."""
    return sorted(_table())


def suggest(code: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Close matches for a mistyped code, best first.

    difflib alone misses the common cases `eng` (no script) and `ENG_LATN` (case), and users also
    type names ("swahili"), so those are tried first.
    """
    cands = list(candidates)
    if not cands:
        return []
    query = code.strip()
    low = query.lower()
    table = _table()
    found: list[str] = []

    def add(items: Iterable[str]) -> None:
        for item in items:
            if item not in found:
                found.append(item)

    add(c for c in cands if c.lower() == low)
    add(c for c in cands if c.lower().split("_")[0] == low.split("_")[0])
    if len(low) >= 3:
        names = {c: table[c].name.lower() for c in cands if c in table}
        add(c for c, name in names.items() if name == low)
        add(c for c, name in names.items() if name.startswith(low))
        add(c for c, name in names.items() if low in name)
    by_lower = {c.lower(): c for c in cands}
    # once the cheap rules found something, only near-identical difflib matches are worth adding
    cutoff = 0.8 if found else 0.6
    add(by_lower[m] for m in difflib.get_close_matches(low, list(by_lower), n=limit, cutoff=cutoff))
    return found[:limit]


def unknown_language_message(code: str, available: Sequence[str], where: str = "") -> str:
    """One message for every unknown-code error: the bad code, suggestions, how to list codes."""
    msg = f"Unknown language code {code!r}{where}."
    close = suggest(code, available)
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += (f" Codes look like eng_Latn (ISO 639-3 code + script); {len(available)} are available. "
            + LIST_HINT)
    return msg


def language_info(code: str) -> LanguageInfo:
    """Name, ISO 639-3 code and script of a FLORES-200 code; XlpromptError for an unknown code."""
    table = _table()
    if code not in table:
        raise XlpromptError(unknown_language_message(str(code), sorted(table)))
    return table[code]


def resolve_languages(spec: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Turn a user's language choice into a list of codes from `available`.

    `None` or "all" gives every available code (in the order of `available`); a comma-separated
    string ("eng_Latn, swh_Latn") or a list gives those codes in the given order, duplicates dropped.
    Every code is checked up front so a long evaluation does not fail on the 150th language.
    """
    available = list(available)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return available
    if isinstance(spec, str):
        items = spec.split(",")
    elif isinstance(spec, Sequence):
        items = list(spec)
    else:
        raise XlpromptError(
            f"Languages must be 'all', a comma-separated string or a list of codes, not {type(spec).__name__}."
        )
    codes: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise XlpromptError(f"Language codes must be strings like 'eng_Latn', got {item!r}.")
        code = item.strip()
        if code and code not in codes:
            codes.append(code)
    if [c.lower() for c in codes] == ["all"]:
        return available
    if not codes:
        raise XlpromptError(
            f"No language codes given in {spec!r}; pass 'all' or codes like 'eng_Latn,swh_Latn'. " + LIST_HINT
        )
    known = set(available)
    for code in codes:
        if code not in known:
            raise XlpromptError(unknown_language_message(code, available))
    return codes
