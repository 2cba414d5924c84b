"""What an ONNX artifact holds: I/O, opset, ops, FP16/FP32 share, tokens per stage, attention maps, Q/DQ
and the ``psvit.*`` metadata. Reads any ONNX file; PSViT facts come from the graph itself."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .graph_checks import SHAPE_OPS

if TYPE_CHECKING:
    import onnx

_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool",
           3: "int8", 2: "uint8"}
_PRECISION = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64", 3: "int8", 2: "int8"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: list[int | str | None]
    dtype: str


@dataclass
class OnnxSummary:
    path: str
    size_bytes: int
    external_data: bool
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    op_counts: dict[str, int]
    node_precision: dict[str, int]  # fp16 / fp32 / cast / other
    fp16_share: float  # fp16 nodes / (fp16 + fp32 nodes)
    tokens_per_stage: list[int]  # attention sequence lengths, in graph order
    attention_maps: int  # Softmax nodes
    shared_maps: int  # Softmax outputs read by two or more MatMuls
    qdq: dict[str, int]
    shape_ops: int
    initializers: int
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _info(vi: "onnx.ValueInfoProto") -> TensorInfo:
    t = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return TensorInfo(vi.name, shape, _DTYPES.get(t.elem_type, str(t.elem_type)))


def _types_and_shapes(model: "onnx.ModelProto") -> dict[str, "onnx.ValueInfoProto"]:
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inspection should work on graphs inference chokes on
        inferred = model
    g = inferred.graph
    return {v.name: v for v in [*g.input, *g.value_info, *g.output]}


def node_precision_counts(model: "onnx.ModelProto", values: dict[str, Any] | None = None) -> dict[str, int]:
    """Nodes by the float type they compute in (their first float output); Casts counted apart."""
    values = values if values is not None else _types_and_shapes(model)
    inits = {i.name: i.data_type for i in model.graph.initializer}
    counts: Counter[str] = Counter({"fp16": 0, "fp32": 0, "cast": 0, "other": 0})
    for n in model.graph.node:
        if n.op_type == "Cast":
            counts["cast"] += 1
            continue
        kind = "other"
        for name in [*n.output, *n.input]:
            vi = values.get(name)
            et = vi.type.tensor_type.elem_type if vi is not None else inits.get(name)
            if et in (1, 10, 16):
                kind = _PRECISION[et]
                break
        counts[kind if kind in counts else "other"] += 1
    return dict(counts)


def inspect_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Summarise the ONNX file at ``path`` (external weights are not read)."""
    import onnx

    from .metadata import read_metadata
    from .onnx_io import load_onnx_graph

    path = Path(path)
    model = load_onnx_graph(path)
    values = _types_and_shapes(model)
    g = model.graph
    ops = Counter(n.op_type for n in g.node)
    readers: Counter[str] = Counter(i for n in g.node if n.op_type == "MatMul" for i in n.input)
    tokens: list[int] = []
    shared = 0
    for n in g.node:
        if n.op_type != "Softmax":
            continue
        shared += readers[n.output[0]] >= 2
        vi = values.get(n.output[0]) or values.get(n.input[0])
        if vi is not None and vi.type.tensor_type.shape.dim:
            last = vi.type.tensor_type.shape.dim[-1]
            if last.HasField("dim_value") and (not tokens or tokens[-1] != last.dim_value):
                tokens.append(last.dim_value)
    precision = node_precision_counts(model, values)
    float_nodes = precision["fp16"] + precision["fp32"]
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer)
    size = path.stat().st_size
    if external:
        size += sum(p.stat().st_size for p in {path.parent / e.value for t in g.initializer
                                                 for e in t.external_data if e.key == "location"} if p.exists())
    return OnnxSummary(
        path=str(path), size_bytes=size, external_data=external,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        inputs=[_info(values.get(i.name, i)) for i in g.input],
        outputs=[_info(values.get(o.name, o)) for o in g.output],
        nodes=len(g.node), op_counts=dict(ops.most_common()), node_precision=precision,
        fp16_share=precision["fp16"] / float_nodes if float_nodes else 0.0,
        tokens_per_stage=tokens, attention_maps=ops.get("Softmax", 0), shared_maps=shared,
        qdq={"QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0)},
        shape_ops=sum(ops.get(o, 0) for o in SHAPE_OPS), initializers=len(g.initializer),
        metadata=read_metadata(model),
    )
