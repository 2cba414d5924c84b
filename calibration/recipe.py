"""The PSViT INT8 recipe: which nodes get Q/DQ, identified from the graph's structure (not node names).

- Linear layers (MatMul with a constant weight: qkv/v, proj, fc1, fc2) and the patch-embed Conv (a dense
  Conv reading the graph input): INT8, weights per-channel, activations per-tensor, both symmetric.
- Q·Kᵀ (MatMul of two activations, neither from a Softmax): INT8 only with ``quantize_qk``.
- A·V (MatMul reading a Softmax output): never — the attention map A is shared by several blocks and a
  per-tensor INT8 A (scale ≈ 1/127) zeroes probabilities below ~0.004 in all of them (docs/PSVIT.md).
- Pooling (depthwise Conv), the head (Gemm/last Linear), LayerNorm, Softmax, GELU, residual Adds: not
  quantized. ``exclude`` regexes (on node names) remove more nodes.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CalibrationError

if TYPE_CHECKING:
    import onnx

OP_TYPES = ("MatMul", "Conv")  # the op types ORT calibrates and quantizes for this recipe


@dataclass
class Recipe:
    """The nodes to quantize and why every other GEMM/Conv is left alone."""

    quantize: list[str]
    kinds: dict[str, str]  # node -> linear | patch_embed | qk | av | pool | head
    excluded: dict[str, str] = field(default_factory=dict)  # node -> reason
    quantize_qk: bool = False
    exclude_patterns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """Compact form for the ONNX metadata: counts per kind, patterns, excluded nodes."""
        counts: dict[str, int] = {}
        for name in self.quantize:
            counts[self.kinds[name]] = counts.get(self.kinds[name], 0) + 1
        return {"quantized": counts, "quantize_qk": self.quantize_qk, "exclude_patterns": self.exclude_patterns,
                "weights": "int8 symmetric per-channel", "activations": "int8 symmetric per-tensor",
                "excluded": self.excluded}


def _attr(node: "onnx.NodeProto", name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def classify(model: "onnx.ModelProto") -> dict[str, str]:
    """Kind of every MatMul/Conv/Gemm node, from the graph structure."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    graph_outputs = {o.name for o in model.graph.output}
    kinds: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type == "Gemm" or (n.op_type == "MatMul" and any(o in graph_outputs for o in n.output)):
            kinds[n.name] = "head"
        elif n.op_type == "MatMul":
            if any(i in constants for i in n.input):
                kinds[n.name] = "linear"
            elif any(producer.get(i) is not None and producer[i].op_type == "Softmax" for i in n.input):
                kinds[n.name] = "av"
            else:
                kinds[n.name] = "qk"
        elif n.op_type == "Conv":
            dense = _attr(n, "group", 1) == 1
            kinds[n.name] = "patch_embed" if dense and n.input[0] in graph_inputs else "pool"
    return kinds


def plan_recipe(
    model: "onnx.ModelProto", *, quantize_qk: bool = False, exclude: Sequence[str] = ()
) -> Recipe:
    """The PSViT recipe for ``model`` (nodes must be named: see :func:`psvit.export.onnx_io.name_nodes`)."""
    try:
        patterns = [re.compile(p) for p in exclude]
    except re.error as exc:
        raise CalibrationError(f"--exclude {exc.pattern!r} is not a valid regular expression ({exc})") from exc
    kinds = classify(model)
    if not any(k in ("linear", "patch_embed") for k in kinds.values()):
        raise CalibrationError("the graph has no Linear (MatMul with a constant weight) or patch-embed Conv; "
                               "is it a PSViT export from psvit-export onnx?")
    wanted = {"linear", "patch_embed"} | ({"qk"} if quantize_qk else set())
    reasons = {"av": "A·V: shared attention probabilities stay in higher precision",
               "qk": "Q·Kᵀ: quantized only with --quantize-qk", "pool": "token pooling is not quantized",
               "head": "classifier head is not quantized"}
    quantize: list[str] = []
    excluded: dict[str, str] = {}
    for name, kind in kinds.items():
        if kind not in wanted:
            excluded[name] = reasons[kind]
            continue
        hit = next((p.pattern for p in patterns if p.search(name)), None)
        if hit is not None:
            excluded[name] = f"--exclude {hit}"
        else:
            quantize.append(name)
    if not quantize:
        raise CalibrationError("the --exclude patterns leave no node to quantize; loosen them")
    return Recipe(quantize=quantize, kinds=kinds, excluded=excluded, quantize_qk=quantize_qk,
                  exclude_patterns=list(exclude))
