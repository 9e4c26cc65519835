"""int8 versions of an exported graph (ONNX Runtime dynamic quantization), cached beside the fp32 graph.

Weights are int8 with one scale per output channel; each MatMul's input activation gets one scale per
tensor, computed on the fly per batch (no calibration data), and the product runs on integer (VNNI) kernels.
A recipe can keep the layers most sensitive to that activation scale in fp32: the feed-forward output
projection (its input comes after GELU, where a few channels carry outlier values) and/or the last
layers. Which recipe, if any, keeps the accuracy is measured by benchmarks/eval_speed.py --engines.
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import XlpromptError
from .export import complete, export_dir, exported_graph, write_graph


@dataclass(frozen=True)
class Int8Recipe:
    name: str
    keep_ffn_output: bool = False  # layer.N.output.dense stays fp32
    keep_last_layers: int = 0      # the last N layers stay fp32 entirely
    keep_attention_output: bool = False  # layer.N.attention.output.dense stays fp32

    def keeps(self, node_name: str, num_layers: int) -> bool:
        match = re.search(r"layer\.(\d+)/", node_name)
        if match is None:
            return False
        layer = int(match.group(1))
        if layer >= num_layers - self.keep_last_layers:
            return True
        if self.keep_ffn_output and re.search(r"layer\.\d+/output/dense/", node_name):
            return True
        return self.keep_attention_output and "/attention/output/dense/" in node_name


RECIPES = {r.name: r for r in (
    Int8Recipe("int8"),
    Int8Recipe("int8-ffn-out-fp32", keep_ffn_output=True),
    Int8Recipe("int8-last2-fp32", keep_last_layers=2),
    Int8Recipe("int8-ffn-attn-out-fp32", keep_ffn_output=True, keep_attention_output=True),
)}


def get_recipe(name: str) -> Int8Recipe:
    if name not in RECIPES:
        raise XlpromptError(f"Unknown int8 recipe {name!r}: use one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def quantize_file(source: Path, target: Path, recipe: Int8Recipe, num_layers: int) -> list[str]:
    """Write the int8 graph of `source` to `target`; returns the MatMul nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    kept = [n.name for n in graph.node if n.op_type == "MatMul" and recipe.keeps(n.name, num_layers)]
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime logs a root WARNING suggesting pre-processing, every time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul"], nodes_to_exclude=kept,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(level)
    return kept


def quantized_graph(backbone, kind: str, recipe_name: str, root: Path | None = None) -> tuple[Path, dict]:
    recipe = get_recipe(recipe_name)
    folder = export_dir(backbone, root)
    name = f"{kind}.{recipe.name}"
    found = complete(folder, name)
    if found is not None:
        return found, {"cache": "hit", "folder": str(folder)}
    source, info = exported_graph(backbone, kind, root)
    kept: list[str] = []

    def build(tmp: Path) -> None:
        kept.extend(quantize_file(source, tmp, recipe, backbone.num_layers))

    graph = write_graph(folder, name, build, {"model": backbone.name, "kind": kind, "recipe": recipe.name})
    return graph, {"cache": "built", "folder": str(folder), "fp32_graph": info["cache"], "kept_fp32": len(kept)}
