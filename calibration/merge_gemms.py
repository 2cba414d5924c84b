"""Sibling GEMMs -> one GEMM before quantization: the exported Q, K and V projections back into one ``qkv``.

The FP32 export projects Q, K and V with three MatMuls on one input (no Split copy of a (N, B, 3D) product,
and a class-token-only block projects the class token's query only: faster in FP32 and FP16). INT8 wants
them as one GEMM: ONNX Runtime fuses a DequantizeLinear into an integer GEMM (``MatMulIntegerToFloat``)
only when the GEMM is its only reader, and its common-subexpression elimination merges dedicated Q/DQ pairs
back into one shared pair, which leaves the three MatMuls in FP32. One GEMM reads the quantized input once,
as PyTorch's ``qkv`` Linear does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx


@dataclass
class _Member:
    """A weight MatMul of a group: its bias Add (or None) and a row Slice of the shared input it reads
    (or None); the Slice moves after the merged GEMM, where it selects the same rows of the product."""

    matmul: Any
    add: Any | None
    row_slice: Any | None

    @property
    def output(self) -> str:
        return (self.add or self.matmul).output[0]


def _ints(weights: dict[str, Any], name: str) -> list[int] | None:
    from onnx import numpy_helper

    return [int(v) for v in numpy_helper.to_array(weights[name]).reshape(-1)] if name in weights else None


def _ranks(model: "onnx.ModelProto") -> dict[str, int]:
    """Rank of every inferred tensor, from a copy without the weights' data: shape inference serializes the
    model it is given, and a whole copy of the weights would raise calibration's peak memory."""
    import onnx
    from onnx import helper

    small = [i for i in model.graph.initializer if i.ByteSize() <= 1 << 16]
    kept = {i.name for i in small}  # reshape targets and the like: their values matter
    weights = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
               for i in model.graph.initializer if i.name not in kept]
    graph = helper.make_graph(model.graph.node, "ranks", [*model.graph.input, *weights], model.graph.output,
                              initializer=small)
    skeleton = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}


def merge_sibling_gemms(model: "onnx.ModelProto") -> int:
    """Merge, in place, every group of two or more MatMuls that multiply one activation (or a Slice of its
    leading axes) by constant 2-D weights, each followed by its own Add of a 1-D constant bias (or none of
    them), into ``MatMul(x, [W1 W2 ...]) -> Add([b1 b2 ...]) -> Split`` (and the Slice after it); the outputs
    keep the names the group produced, so the rest of the graph is untouched. Returns the groups merged."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    output_names = {o.name for o in graph.output}
    ranks = _ranks(model)

    def row_slice_source(name: str) -> tuple[str, Any] | tuple[None, None]:
        """(input, Slice) when ``name`` is a Slice of leading axes only, read by one node."""
        node = producer.get(name)
        if node is None or node.op_type != "Slice" or len(readers.get(name, [])) != 1 or len(node.input) < 4:
            return None, None
        axes, rank = _ints(weights, node.input[3]), ranks.get(node.input[0])
        if axes is None or rank is None or any(a < 0 or a >= rank - 1 for a in axes):
            return None, None
        if any(i and i not in weights for i in node.input[1:]):
            return None, None
        return node.input[0], node

    def member(node: Any) -> tuple[str, _Member] | None:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.input[0] in weights:
            return None
        if len(weights[node.input[1]].dims) != 2 or node.output[0] in output_names:
            return None
        source, row_slice = row_slice_source(node.input[0])
        found = readers.get(node.output[0], [])
        add = found[0] if len(found) == 1 and found[0].op_type == "Add" else None
        if add is not None and (add.input[0] != node.output[0] or add.input[1] not in weights
                                or len(weights[add.input[1]].dims) != 1):
            add = None
        return source or node.input[0], _Member(node, add, row_slice)

    groups: dict[str, list[_Member]] = {}
    for node in graph.node:
        found = member(node)
        if found is not None:
            groups.setdefault(found[0], []).append(found[1])

    replace: dict[int, list[Any]] = {}  # id(first node of the group) -> new nodes
    drop: set[int] = set()
    merged_away: set[str] = set()  # weights and biases of merged nodes (dropped unless still read)
    merged = 0
    for x, group in groups.items():
        biased = {m.add is not None for m in group}
        ws = [numpy_helper.to_array(weights[m.matmul.input[1]]) for m in group]
        if len(group) < 2 or len(biased) != 1 or len({(w.shape[0], w.dtype) for w in ws}) != 1:
            continue
        has_bias = biased.pop()
        merged += 1
        tag = f"merged_gemm_{merged}"
        w_name, b_name, sizes_name = f"{tag}.weight", f"{tag}.bias", f"{tag}.split"
        graph.initializer.append(numpy_helper.from_array(np.concatenate(ws, axis=1), w_name))  # (K, ΣN)
        graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in ws], np.int64), sizes_name))
        nodes = [helper.make_node("MatMul", [x, w_name], [f"{tag}.mm"], name=f"{tag}.MatMul")]
        product = f"{tag}.mm"
        if has_bias:
            bs = [numpy_helper.to_array(weights[m.add.input[1]]) for m in group]
            graph.initializer.append(numpy_helper.from_array(np.concatenate(bs), b_name))
            nodes.append(helper.make_node("Add", [product, b_name], [f"{tag}.add"], name=f"{tag}.Add"))
            product = f"{tag}.add"
        parts = [f"{tag}.part{i}" if m.row_slice is not None else m.output for i, m in enumerate(group)]
        nodes.append(helper.make_node("Split", [product, sizes_name], parts, name=f"{tag}.Split", axis=-1))
        for part, m in zip(parts, group):
            if m.row_slice is not None:  # the same rows, taken from the product
                nodes.append(helper.make_node("Slice", [part, *m.row_slice.input[1:]], [m.output],
                                              name=f"{m.row_slice.name or tag}.after"))
        first = next(n for n in graph.node if any(n is p for m in group for p in (m.row_slice, m.matmul)))
        replace[id(first)] = nodes
        drop |= {id(n) for m in group for n in (m.matmul, m.add, m.row_slice) if n is not None}
        merged_away |= {m.matmul.input[1] for m in group} | {m.add.input[1] for m in group if m.add is not None}
    if not merged:
        return 0
    new_nodes: list[Any] = []
    for node in graph.node:
        new_nodes += replace.get(id(node), [] if id(node) in drop else [node])
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used or i.name not in merged_away]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return merged
