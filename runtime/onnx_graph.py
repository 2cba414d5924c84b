"""The precision an ONNX graph computes in, read from the graph itself (not from its metadata)."""
from __future__ import annotations

from typing import Any

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def graph_precision(model: Any) -> str:
    """``int8`` (Q/DQ nodes), ``fp16`` (FP16-typed weights, values, inputs/outputs or casts to FP16) or
    ``fp32``, for an ``onnx.ModelProto`` (read without importing onnx)."""
    graph = model.graph
    if any(n.op_type in QDQ_OPS for n in graph.node):
        return "int8"
    typed16 = any(t.data_type == FLOAT16 for t in graph.initializer) or any(
        v.type.tensor_type.elem_type == FLOAT16 for v in [*graph.value_info, *graph.input, *graph.output]
    ) or any(n.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in n.attribute) for n in graph.node)
    return "fp16" if typed16 else "fp32"
