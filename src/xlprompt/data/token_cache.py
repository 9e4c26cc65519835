"""Tokenized datasets kept on disk and in memory, so each dataset is tokenized once for every run and prompt.

Tokenizing SIB-200's 205 test sets took 6-23 s on a busy 2-core machine, and every run and prompt
evaluated paid it again. An entry's key is a sha256 over the cache format version, the tokenizer
(its tokenizer.json, or vocabulary for slow tokenizers, plus special tokens and truncation side), the
`tokenizers`/`transformers` versions, the task (name, format class and the format's settings),
`max_length` and the data frame's content. Any change is a different key, so nothing is invalidated by hand.

On disk an entry is `<root>/<key[:2]>/<key>.safetensors` (token ids as flat int32 plus row offsets; other
fields as flat arrays) and `<key>.json` (the layout, and the sha256 and size of the tensor file). Both
are written atomically, the JSON last. A reader trusts an entry only when the JSON parses, names the same key and
matches the tensor file's hash, so a crash mid-write or a damaged file counts as a miss, never as a
partial dataset. Nothing is pickled. Entries are also kept in memory (as arrays, rebuilt into lists on
each hit) for reuse within the process.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..core import io
from .collate import Encoded

CACHE_VERSION = 1  # bump when what encode() produces changes for the same inputs
MEMORY_BUDGET_BYTES = 256 * 2**20
_memory: "OrderedDict[str, tuple[dict, dict, int]]" = OrderedDict()
_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class Unsupported(Exception):
    """A field layout the cache does not store; the dataset is then tokenized every time."""


# ------------------------------------------------------------------------------------------------ keys
def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides a tokenizer's output, memoised per object (the 250k-piece tokenizer.json
    of the default model takes ~0.15 s to serialise)."""
    try:
        size, digest = _fingerprints.get(tokenizer, (None, None))
    except TypeError:  # unhashable object: no memo
        size, digest = None, None
    if digest is not None and size == len(tokenizer):  # added tokens change len: recompute
        return digest
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    special = {"map": getattr(tokenizer, "special_tokens_map", {}),
               "ids": getattr(tokenizer, "all_special_ids", []),
               "added": sorted((int(i), str(t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items())}
    sides = [getattr(tokenizer, "truncation_side", None), getattr(tokenizer, "padding_side", None)]
    digest = _sha(type(tokenizer).__qualname__, body, json.dumps(special, sort_keys=True, default=str), sides)
    try:
        _fingerprints[tokenizer] = (len(tokenizer), digest)
    except TypeError:
        pass
    return digest


def _jsonable(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def frame_digest(frame) -> str:
    """sha256 of a frame's columns (names, dtypes, values in row order); the index is not read by encode."""
    h = hashlib.sha256()
    for name in sorted(frame.columns, key=str):
        col = frame[name]
        h.update(f"{name}\x00{col.dtype}\x00{len(col)}\x00".encode())
        values = col.to_numpy()
        if values.dtype.kind in "biuf":
            h.update(np.ascontiguousarray(values).tobytes())
        else:
            h.update(json.dumps(col.tolist(), ensure_ascii=False, default=_jsonable).encode("utf-8"))
    return h.hexdigest()


def task_identity(task) -> str:
    fmt = task.format
    settings = json.dumps(vars(fmt) if hasattr(fmt, "__dict__") else {}, sort_keys=True, default=str)
    return f"{task.name}|{type(fmt).__module__}.{type(fmt).__qualname__}|{settings}"


def cache_key(task, tokenizer, frame, max_length: int) -> str:
    import tokenizers
    import transformers

    return _sha(CACHE_VERSION, tokenizer_fingerprint(tokenizer), tokenizers.__version__, transformers.__version__,
                task_identity(task), max_length, frame_digest(frame))


# ------------------------------------------------------------------------------------------- layout
def _pack(name: str, value, tensors: dict, layout: dict) -> None:
    """Store one field as flat arrays; `layout[name]` says how to rebuild it."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise Unsupported(f"{name}: array of {value.dtype}")
        tensors[name] = np.ascontiguousarray(value)
        layout[name] = {"kind": "array"}
        return
    if not isinstance(value, (list, tuple)):
        raise Unsupported(f"{name}: {type(value).__name__}")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        tensors[name] = np.asarray(value, dtype=np.int64).reshape(-1)
        layout[name] = {"kind": "ints"}
    elif all(isinstance(v, str) for v in value):
        layout[name] = {"kind": "strings", "values": list(value)}
    elif all(isinstance(v, (list, tuple, np.ndarray)) for v in value):
        rows = [np.asarray(v) for v in value]
        if any(r.dtype.kind not in "iu" and r.size for r in rows):
            raise Unsupported(f"{name}: ragged rows that are not integers")
        tail = {r.shape[1:] for r in rows if r.size} or {()}
        if len(tail) != 1:
            raise Unsupported(f"{name}: rows of different trailing shapes")
        tail = tail.pop()
        flat = np.concatenate([r.reshape((-1, *tail)) for r in rows]) if rows else np.zeros((0, *tail))
        dtype = np.int32 if name == "token_ids" else (np.result_type(*rows) if rows else np.int64)
        tensors[name] = np.ascontiguousarray(flat.astype(dtype))
        tensors[name + ".offsets"] = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        layout[name] = {"kind": "ragged", "rows": "array" if isinstance(value[0], np.ndarray) else "list"}
    else:
        raise Unsupported(f"{name}: mixed values")


def _unpack(name: str, tensors: dict, layout: dict):
    spec = layout[name]
    kind = spec["kind"]
    if kind == "array":
        return tensors[name]
    if kind == "ints":
        return tensors[name].tolist()
    if kind == "strings":
        return list(spec["values"])
    flat, offsets = tensors[name], tensors[name + ".offsets"].tolist()
    if spec["rows"] == "array":
        return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    items = flat.tolist()
    return [items[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def pack(encoded: Encoded) -> tuple[dict, dict]:
    tensors, layout = {}, {}
    _pack("token_ids", encoded.token_ids, tensors, layout)
    _pack("labels", encoded.labels, tensors, layout)
    for name, value in encoded.extra.items():
        if name in ("token_ids", "labels") or name.endswith(".offsets"):
            raise Unsupported(f"extra field named {name}")
        _pack("extra." + name, value, tensors, layout)
    if layout["token_ids"]["kind"] not in ("ragged",) and len(encoded):
        raise Unsupported("token_ids are not one list per row")
    return tensors, layout


def unpack(tensors: dict, layout: dict) -> Encoded:
    if layout["token_ids"]["kind"] == "ragged":
        token_ids = _unpack("token_ids", tensors, layout)
    else:
        token_ids = []
    labels = _unpack("labels", tensors, layout)
    extra = {name[len("extra."):]: _unpack(name, tensors, layout) for name in layout if name.startswith("extra.")}
    return Encoded(token_ids, labels, extra)


# -------------------------------------------------------------------------------------------- cache
class TokenCache:
    """`encode(task, tokenizer, frame, max_length)` = `task.encode(...)`, served from memory or disk when the
    same tokenizer, task, max_length and data were encoded before. `root=None` keeps memory only."""

    FORMAT = "xlprompt-token-cache"  # the entry format named in each JSON (features.py reuses the class)

    def __init__(self, root: str | Path | None = None, memory: bool = True):
        self.root = Path(root) if root is not None else None
        self.memory = memory
        self.stats = {"memory_hits": 0, "disk_hits": 0, "misses": 0, "writes": 0, "unsupported": 0,
                      "key_seconds": 0.0, "read_seconds": 0.0, "tokenize_seconds": 0.0, "write_seconds": 0.0}
        self._warned = False

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.safetensors", folder / f"{key}.json"

    def encode(self, task, tokenizer, frame, max_length: int) -> Encoded:
        t0 = time.perf_counter()
        key = cache_key(task, tokenizer, frame, max_length)
        t1 = time.perf_counter()
        self.stats["key_seconds"] += t1 - t0
        if self.memory and key in _memory:
            _memory.move_to_end(key)
            tensors, layout, _ = _memory[key]
            self.stats["memory_hits"] += 1
            encoded = unpack(tensors, layout)
            self.stats["read_seconds"] += time.perf_counter() - t1
            return encoded
        entry = self.read(key) if self.root is not None else None
        if entry is not None:
            self.stats["disk_hits"] += 1
            self._remember(key, *entry)
            encoded = unpack(*entry)
            self.stats["read_seconds"] += time.perf_counter() - t1
            return encoded
        self.stats["misses"] += 1
        encoded = task.encode(tokenizer, frame, max_length)
        t2 = time.perf_counter()
        self.stats["tokenize_seconds"] += t2 - t1
        try:
            tensors, layout = pack(encoded)
        except Unsupported:
            self.stats["unsupported"] += 1
            return encoded
        self._remember(key, tensors, layout)
        if self.root is not None:
            self.write(key, tensors, layout)
            self.stats["write_seconds"] += time.perf_counter() - t2
        return encoded

    def _remember(self, key: str, tensors: dict, layout: dict) -> None:
        if not self.memory:
            return
        size = sum(a.nbytes for a in tensors.values())
        _memory[key] = (tensors, layout, size)
        while len(_memory) > 1 and sum(v[2] for v in _memory.values()) > MEMORY_BUDGET_BYTES:
            _memory.popitem(last=False)

    def write(self, key: str, tensors: dict, layout: dict) -> None:
        from safetensors.numpy import save_file

        data_path, meta_path = self.paths(key)
        try:
            with io.atomic_path(data_path) as tmp:
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
                digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
                size = tmp.stat().st_size
            io.write_json(meta_path, {"format": f"{self.FORMAT}/{CACHE_VERSION}", "key": key,
                                      "sha256": digest, "bytes": size, "layout": layout})
            self.stats["writes"] += 1
        except OSError as exc:  # a read-only or full cache folder slows evaluation down, nothing more
            if not self._warned:
                warnings.warn(f"token cache {self.root} not written ({exc}); tokenizing every time", stacklevel=3)
                self._warned = True

    def read(self, key: str) -> tuple[dict, dict] | None:
        """The entry's (tensors, layout), or None when it is absent, incomplete or damaged."""
        from safetensors.numpy import load

        data_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("bytes") != len(data) \
                or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        try:
            tensors = load(data)
            layout = meta["layout"]
            for name, spec in layout.items():  # every field the layout names must be there
                if spec["kind"] == "ragged" and int(tensors[name + ".offsets"][-1]) != len(tensors[name]):
                    return None
                if spec["kind"] != "strings" and name not in tensors:
                    return None
        except Exception:  # a hash collision with garbage is not worth a crash
            return None
        return tensors, layout


def default_token_cache(setting=True) -> TokenCache | None:
    """`True`: the folder `XLPROMPT_TOKEN_CACHE` names (`off` or `0`: memory only), else
    `<xlprompt cache>/tokens`, plus memory; a path: that folder; `False`/None: no cache at all."""
    if setting is False or setting is None:
        return None
    if setting is True:
        import os

        from ..core.paths import cache_dir

        env = os.environ.get("XLPROMPT_TOKEN_CACHE")
        if env is not None and env.strip().lower() in ("off", "0", "false", "no", ""):
            return TokenCache(None)
        return TokenCache(Path(env).expanduser() if env else cache_dir() / "tokens")
    return TokenCache(setting)


def clear_memory() -> None:
    _memory.clear()
