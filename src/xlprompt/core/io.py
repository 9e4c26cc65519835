"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename, then fsync the folder.

A crash leaves either the old file or the new one, never a half-written file that is later read as whole.
Files get the permissions a plain `open` would give them (0644 under the usual umask), not mkstemp's 0600,
so a run folder written by one user can be served or read by another.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import WriteFailed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a read-only or full folder: a clear error, nothing touched
        raise WriteFailed(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
        fsync_folder(path.parent)
    except WriteFailed:
        raise
    except OSError as exc:  # the disk filled while writing, or the rename was refused
        raise WriteFailed(path, exc) from exc
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_cache_entry(path: str | os.PathLike) -> dict | None:
    """A JSON object kept to save work, or None where it is absent, unreadable, not JSON or not an object:
    the caller then does the work again."""
    try:
        found = read_json(path)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def write_cache_entry(path: str | os.PathLike, obj: dict) -> None:
    """`write_json`, where a folder that cannot be written only costs the next run the work again."""
    try:
        write_json(path, obj)
    except WriteFailed:
        pass


def unique_tensors(tensors: dict) -> dict:
    """Drop later names of tensors that share memory (tied input/output embeddings): safetensors refuses
    shared tensors, and a model with tied weights restores the others when the first is loaded."""
    seen, out = set(), {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in unique_tensors(tensors).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_tensors(path: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
