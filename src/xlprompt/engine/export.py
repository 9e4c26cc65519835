"""The frozen backbone exported to ONNX once and kept in xlprompt's cache, like the converted offline default.

The graph takes input *embeddings*, not token ids, so a soft prompt enters exactly as it does in PyTorch
(the prompt method writes its vectors into the embeddings before the backbone runs). Two graphs per
backbone, each exported on first use:

* `plain`: (inputs_embeds, attention_mask) -> last hidden state, for input prompts and no prompt;
* `prefix`: the same plus `past_keys`/`past_values`, (layers, batch, kv_heads, prefix, head_dim) each, for
  deep prompts (the prefix enters as the attention layers' past keys and values).

Derived graphs (int8 recipes, engine/quantize.py) are built from these and cached beside them.

Cache layout: `<cache>/engines/<key>/` (env XLPROMPT_ENGINE_CACHE names another root), where `key`
hashes the backbone's weights (every tensor the graph holds; the input embedding matrix is outside the
graph), the installed torch / transformers / onnx / onnxruntime versions and `FORMAT`. A change of any
of them gives a new folder, so a stale graph is never used. Within the folder each graph is written to a temporary file and renamed into place, then its
`<name>.json` (size and sha256 of the graph file) is written last: a graph without that record, or one
whose size or hash differs from it (a half-written or damaged file), is rebuilt, never loaded.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..core import io
from ..core.errors import XlpromptError
from ..core.paths import cache_dir

FORMAT = "xlprompt-onnx/1"  # bump when what an export contains changes
OPSET = 17


def library_versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for name in ("transformers", "onnx", "onnxruntime"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def weights_hash(backbone) -> str:
    """sha256 over the name, dtype, shape and bytes of every body tensor the exported graph holds."""
    cached = getattr(backbone, "_xlprompt_weights_hash", None)
    if cached is not None:
        return cached
    skip = backbone.input_embeddings.weight
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.body.state_dict(keep_vars=False).items()):
        if tensor.data_ptr() == skip.data_ptr() and tensor.shape == skip.shape:
            continue
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    value = digest.hexdigest()
    backbone._xlprompt_weights_hash = value  # the backbone is frozen while an engine serves it
    return value


def cache_key(backbone, versions: dict | None = None) -> str:
    versions = versions or library_versions()
    text = "|".join([FORMAT, weights_hash(backbone), *(f"{k}={v}" for k, v in sorted(versions.items()))])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def engines_root() -> Path:
    """`XLPROMPT_ENGINE_CACHE`, else `<xlprompt cache>/engines`."""
    env = os.environ.get("XLPROMPT_ENGINE_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "engines"


def export_dir(backbone, root: Path | None = None) -> Path:
    return Path(root or engines_root()) / cache_key(backbone)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def complete(folder: Path, name: str) -> Path | None:
    """The graph file `name` in `folder` if it was written whole (its record matches), else None."""
    graph, record = folder / f"{name}.onnx", folder / f"{name}.json"
    if not (graph.exists() and record.exists()):
        return None
    try:
        meta = io.read_json(record)
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or meta.get("bytes") != graph.stat().st_size or \
            meta.get("sha256") != file_digest(graph):
        return None
    return graph


def write_graph(folder: Path, name: str, build, info: dict | None = None) -> Path:
    """Run `build(tmp_path)` to write a graph, rename it to `<name>.onnx`, then write its record."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = folder / f"{name}.onnx"
    (folder / f"{name}.json").unlink(missing_ok=True)  # the graph is incomplete until its record is back
    started = time.perf_counter()
    with io.atomic_path(graph) as tmp:
        build(tmp)
    io.write_json(folder / f"{name}.json", {
        "format": FORMAT, "bytes": graph.stat().st_size, "sha256": file_digest(graph),
        "seconds": round(time.perf_counter() - started, 2), "versions": library_versions(), **(info or {})})
    return graph


class _Plain(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs_embeds, attention_mask):
        return type(self.backbone).forward(self.backbone, inputs_embeds, attention_mask)


class _Prefix(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, inputs_embeds, attention_mask, past_keys, past_values):
        past = [(past_keys[i], past_values[i]) for i in range(past_keys.shape[0])]
        return type(self.backbone).forward(self.backbone, inputs_embeds, attention_mask, past_key_values=past)


def export_graph(backbone, kind: str, path: Path) -> None:
    """Trace the backbone's forward (PyTorch) into an ONNX file with dynamic batch and lengths."""
    from ..prompts.deep_prompt import kv_geometry

    hidden = backbone.hidden_size
    embeds = torch.randn(2, 5, hidden)
    axes = {"inputs_embeds": {0: "batch", 1: "tokens"}, "hidden": {0: "batch", 1: "tokens"}}
    if kind == "plain":
        module, names = _Plain(backbone), ["inputs_embeds", "attention_mask"]
        args = (embeds, torch.ones(2, 5, dtype=torch.long))
        axes["attention_mask"] = {0: "batch", 1: "tokens"}
    elif kind == "prefix":
        kv_heads, head_dim = kv_geometry(backbone.model.config, backbone.num_heads, hidden)
        prefix = torch.randn(backbone.num_layers, 2, kv_heads, 3, head_dim)
        module, names = _Prefix(backbone), ["inputs_embeds", "attention_mask", "past_keys", "past_values"]
        args = (embeds, torch.ones(2, 8, dtype=torch.long), prefix, prefix.clone())
        axes["attention_mask"] = {0: "batch", 1: "prefix_and_tokens"}
        axes["past_keys"] = axes["past_values"] = {1: "batch", 3: "prefix"}
    else:
        raise ValueError(kind)
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=names, output_names=["hidden"],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)


def exported_graph(backbone, kind: str, root: Path | None = None) -> tuple[Path, dict]:
    """The cached graph of `kind` for this backbone, exported now if it is missing or incomplete."""
    folder = export_dir(backbone, root)
    found = complete(folder, kind)
    if found is not None:
        return found, {"cache": "hit", "folder": str(folder)}
    if backbone.kind != "encoder":
        raise XlpromptError("The ONNX engine exports encoder backbones only.")
    started = time.perf_counter()
    try:
        graph = write_graph(folder, kind, lambda tmp: export_graph(backbone, kind, tmp),
                            {"model": backbone.name, "kind": kind})
    except XlpromptError:
        raise
    except Exception as exc:
        raise XlpromptError(f"Exporting {backbone.name} to ONNX failed ({type(exc).__name__}: {exc}); "
                            "use --engine torch.") from exc
    return graph, {"cache": "built", "folder": str(folder), "seconds": round(time.perf_counter() - started, 2)}
