"""Pooled features of a frozen backbone: what a linear head on an unchanged model sees, computed once.

A head-only run's logits are `head.linear(head.pool(hidden))`, and with the backbone frozen the pooled
vector of a sentence never changes: the converged probe (probe.py) fits on these vectors, and its
evaluation is one matrix product per language once they exist. They are computed per data frame in
length-sorted batches whose layout depends on the frame alone, so a cached entry and a fresh one are
the same numbers.

Cache: beside the token cache (`<token cache>/features/`), one entry per (backbone weights, dtype and
device type, tokenizer, task, max_length, data frame, pooling), in the token cache's format
(safetensors + a JSON with the file's sha256, written atomically, JSON last; a damaged entry is a miss).
The backbone's fingerprint is a sha256 over its weights, memoised per module until a weight changes.
"""
from __future__ import annotations

import hashlib
import time
import weakref

import numpy as np
import torch

from ..data.collate import Collator, Encoded, length_sorted_batches
from ..execution.device import CPU_MAX_TOKENS, to_device
from ..models.heads import PooledLinearHead
from ..data.token_cache import TokenCache, _memory, _sha, cache_key


FEATURES_VERSION = 1
BATCH_TOKENS = CPU_MAX_TOKENS  # padded tokens per batch (evaluation's CPU budget); batches depend on data only
_weights_digests: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def uses_features(model, config) -> bool:
    """Whether a run's outputs are a linear map of frozen pooled features (a head-only run on an encoder
    or a decoder's label position): then evaluation may go through `head_outputs`."""
    return (model.method is None and bool(config.freeze_model) and isinstance(model.head, PooledLinearHead))


def weights_fingerprint(backbone) -> str:
    """sha256 over the backbone's parameters and buffers (names, dtypes, shapes, bytes); recomputed only
    when a tensor was modified in place since (torch's version counters) or replaced."""
    tensors = list(backbone.model.state_dict().items())
    version = tuple((t.data_ptr(), t._version) for _, t in tensors)
    try:
        seen = _weights_digests.get(backbone)
    except TypeError:
        seen = None
    if seen is not None and seen[0] == version:
        return seen[1]
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    try:
        _weights_digests[backbone] = (version, digest)
    except TypeError:
        pass
    return digest


def plain_collator(backbone) -> Collator:
    """The layout of a model without prompt slots (what a head-only run reads)."""
    tok = backbone.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Collator(backbone.kind, 0, pad_id=pad, eos_id=tok.eos_token_id)


@torch.inference_mode()
def pooled_features(backbone, pool, encoded: Encoded, stats: dict | None = None) -> np.ndarray:
    """(rows, hidden) float32: `pool(hidden, attention_mask, label_positions)` of the unprompted backbone,
    in row order. `pool` is a PooledLinearHead's `pool` method."""
    was_training = backbone.training
    backbone.eval()
    collate = plain_collator(backbone)
    device = next(backbone.parameters()).device
    out = np.zeros((len(encoded), backbone.hidden_size), dtype=np.float32)
    lengths = [n + 1 for n in encoded.lengths()]
    try:
        for rows in length_sorted_batches(lengths, len(encoded) or 1, BATCH_TOKENS):
            t0 = time.perf_counter()
            batch = collate(encoded, rows)
            to_device(batch, device)
            t1 = time.perf_counter()
            hidden = backbone(backbone.embed(batch.input_ids), batch.attention_mask)
            out[rows] = pool(hidden, batch.attention_mask, batch.label_positions).float().cpu().numpy()
            if stats is not None:
                stats["collate"] = stats.get("collate", 0.0) + t1 - t0
                stats["forward"] = stats.get("forward", 0.0) + time.perf_counter() - t1
                stats["padded_tokens"] = stats.get("padded_tokens", 0) + batch.input_ids.numel()
                stats["tokens"] = stats.get("tokens", 0) + int(batch.attention_mask.sum())
                stats["batches"] = stats.get("batches", 0) + 1
    finally:
        backbone.train(was_training)
    return out


class FeatureCache(TokenCache):
    """Pooled features on disk and in memory, in the token cache's entry format."""

    FORMAT = "xlprompt-feature-cache"

    def features(self, backbone, head, task, frame, encoded: Encoded, max_length: int,
                 stats: dict | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        param = next(backbone.parameters())
        key = _sha(self.FORMAT, FEATURES_VERSION, weights_fingerprint(backbone), param.dtype, param.device.type,
                   cache_key(task, backbone.tokenizer, frame, max_length), head.pooling)
        t1 = time.perf_counter()
        self.stats["key_seconds"] += t1 - t0
        if self.memory and key in _memory:
            _memory.move_to_end(key)
            self.stats["memory_hits"] += 1
            return _memory[key][0]["features"]
        entry = self.read(key) if self.root is not None else None
        if entry is not None and "features" in entry[0]:
            self.stats["disk_hits"] += 1
            self._remember(key, *entry)
            self.stats["read_seconds"] += time.perf_counter() - t1
            return entry[0]["features"]
        self.stats["misses"] += 1
        features = pooled_features(backbone, head.pool, encoded, stats)
        t2 = time.perf_counter()
        tensors, layout = {"features": features}, {"features": {"kind": "array"}}
        self._remember(key, tensors, layout)
        if self.root is not None:
            self.write(key, tensors, layout)
            self.stats["write_seconds"] += time.perf_counter() - t2
        return features


def feature_cache_for(token_cache: TokenCache | None) -> FeatureCache:
    """Features live beside the tokens they came from (`<token cache>/features`); in memory only when the
    token cache is, and not kept at all when there is no token cache."""
    if token_cache is None:
        return FeatureCache(None, memory=False)
    if token_cache.root is None:
        return FeatureCache(None)
    return FeatureCache(token_cache.root / "features")


def head_outputs(model, task, frames: dict, encoded: dict, max_length: int, cache: FeatureCache,
                 stats: dict) -> list:
    """A head-only run's class logits for every row of `encoded` (languages in dict order), through the
    pooled-feature cache; `stats` gets evaluation's timing keys."""
    for k in ("collate", "forward"):
        stats.setdefault(k, 0.0)
    for k in ("tokens", "padded_tokens", "batches"):
        stats.setdefault(k, 0)
    out: list = []
    linear = model.head.linear
    with torch.inference_mode():
        for code, enc in encoded.items():
            feats = cache.features(model.backbone, model.head, task, frames[code], enc, max_length, stats)
            t0 = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(feats)).to(linear.weight.device, linear.weight.dtype)
            logits = linear(x).float().cpu().numpy()
            stats["forward"] += time.perf_counter() - t0
            out.extend(logits)
    return out
