"""The frozen backbone's forward pass run by ONNX Runtime instead of PyTorch.

`OnnxBackbone.forward` has the signature of `Backbone.forward` and returns the same hidden states (a torch
tensor), so prompt methods, heads, evaluation and serving's mixed batches run unchanged: input prompts are
already in the embeddings, deep prompts arrive as per-layer (K, V) prefixes and go to the `prefix` graph.
One ONNX Runtime session per graph and thread count, made on first use; the thread count is torch's at
the time of the call, so `threads="auto"` (inference.ThreadTuner) steers both engines alike.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import XlpromptError
from .export import exported_graph


def prefix_pairs(past) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (K, V) from what prompt methods hand the backbone: a list of pairs or a transformers cache."""
    if isinstance(past, (list, tuple)):
        return [(k, v) for k, v in past]
    layers = getattr(past, "layers", None)
    if layers is not None:  # transformers >= 4.56: DynamicCache.layers[i].keys / .values
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(past, "to_legacy_cache"):
        return [(k, v) for k, v in past.to_legacy_cache()]
    raise XlpromptError(f"The ONNX engine cannot read a prefix of type {type(past).__name__}: use --engine torch.")


class OnnxBackbone:
    """Runs a Backbone's body through ONNX Runtime: fp32, or int8 by a recipe of engine/quantize.py."""

    def __init__(self, backbone, precision: str = "fp32", recipe: str = "int8", root=None):
        import onnxruntime  # noqa: F401  (fail here, not at the first batch)

        if precision not in ("fp32", "int8"):
            raise XlpromptError(f"The ONNX engine runs fp32 or int8, not {precision}.")
        self.backbone, self.precision, self.recipe, self.root = backbone, precision, recipe, root
        self.graphs: dict[str, tuple] = {}     # kind -> (path, info)
        self.sessions: dict[tuple, object] = {}

    def graph(self, kind: str):
        if kind not in self.graphs:
            if self.precision == "int8":
                from .quantize import quantized_graph

                self.graphs[kind] = quantized_graph(self.backbone, kind, self.recipe, self.root)
            else:
                self.graphs[kind] = exported_graph(self.backbone, kind, self.root)
        return self.graphs[kind][0]

    def session(self, kind: str, threads: int):
        key = (kind, threads)
        if key not in self.sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # spinning threads waste shared cores (see inference.py's module docstring)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            self.sessions[key] = ort.InferenceSession(str(self.graph(kind)), options,
                                                      providers=["CPUExecutionProvider"])
        return self.sessions[key]

    def prepare(self, deep: bool = False) -> dict:
        """Export/quantize (or find in the cache) and open the graph now; what happened, for `speed`."""
        kind = "prefix" if deep else "plain"
        self.session(kind, torch.get_num_threads())
        return self.graphs[kind][1]

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, past_key_values=None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is not None:
            raise XlpromptError("The ONNX engine computes positions itself (encoders): explicit position ids "
                                "need --engine torch.")
        feeds = {"inputs_embeds": _array(inputs_embeds, np.float32), "attention_mask": _array(attention_mask, np.int64)}
        kind = "plain"
        if past_key_values is not None:
            pairs = prefix_pairs(past_key_values)
            kind = "prefix"
            feeds["past_keys"] = np.stack([_array(k, np.float32) for k, _ in pairs])
            feeds["past_values"] = np.stack([_array(v, np.float32) for _, v in pairs])
        hidden = self.session(kind, torch.get_num_threads()).run(["hidden"], feeds)[0]
        return torch.from_numpy(hidden).to(inputs_embeds.dtype)


def _array(tensor: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
