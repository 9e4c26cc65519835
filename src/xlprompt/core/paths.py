"""Where xlprompt reads data and keeps its cache."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`XLPROMPT_CACHE`, else `$XDG_CACHE_HOME/xlprompt`, else `~/.cache/xlprompt`."""
    env = os.environ.get("XLPROMPT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "xlprompt"


def default_data_dir() -> Path | None:
    """`XLPROMPT_DATA` if set, else `../shared/data` beside the current directory when it exists."""
    env = os.environ.get("XLPROMPT_DATA")
    if env:
        return Path(env).expanduser()
    shared = Path.cwd().parent / "shared" / "data"
    return shared if shared.is_dir() else None
